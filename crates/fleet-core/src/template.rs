//! Identity templates: `env-{id:06}`, `fleet/{cohort}/{device_id}/telemetry`.
//!
//! Placeholders: `{id}` (global device id), `{index}` (index within the cohort), `{cohort}`,
//! `{profile}`, and in topics and client ids `{device_id}` (the rendered device id); in
//! profiles with `[gateway]`, `{gateway}` (the rendered gateway id) and `{gateway_index}` (the
//! gateway's number in its cohort). A number placeholder may carry a zero-padded width:
//! `{id:06}`. `{{` and `}}` write literal braces.
//! Templates are parsed once and rendered into a reused buffer, so a million devices cost no
//! stored strings.

use std::io::Write as _;

/// What a placeholder stands for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Var {
    Id,
    Index,
    Cohort,
    Profile,
    DeviceId,
    /// The rendered id of the device's gateway (profiles with `[gateway]`).
    Gateway,
    /// The gateway's number within its cohort, from 0.
    GatewayIndex,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Seg {
    Lit(String),
    Var(Var, usize),
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    segs: Vec<Seg>,
}

/// The values a template is rendered with.
#[derive(Clone, Copy, Debug)]
pub struct TemplateVars<'a> {
    pub id: u32,
    pub index: u32,
    pub cohort: &'a str,
    pub profile: &'a str,
    /// The rendered device id; empty while rendering the device id itself.
    pub device_id: &'a [u8],
    /// The rendered gateway id (empty without a gateway, or while rendering it).
    pub gateway: &'a [u8],
    pub gateway_index: u32,
}

/// A piece of text with placeholders: literal text (`{{` and `}}` already unescaped) or the
/// inside of one `{...}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Piece {
    Text(String),
    Placeholder(String),
}

/// Splits `text` into literal text and `{placeholder}`s; `{{` and `}}` are literal braces.
/// The error names an unclosed `{` or a lone `}`.
pub fn split_placeholders(text: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut lit = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                lit.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                lit.push('}');
            }
            '{' => {
                let mut name = String::new();
                let mut closed = false;
                for c in chars.by_ref() {
                    if c == '}' {
                        closed = true;
                        break;
                    }
                    name.push(c);
                }
                if !closed {
                    return Err(format!("unclosed `{{` in `{text}`"));
                }
                if !lit.is_empty() {
                    out.push(Piece::Text(std::mem::take(&mut lit)));
                }
                out.push(Piece::Placeholder(name));
            }
            '}' => {
                return Err(format!(
                    "unmatched `}}` in `{text}` (write `}}}}` for a literal brace)"
                ));
            }
            c => lit.push(c),
        }
    }
    if !lit.is_empty() {
        out.push(Piece::Text(lit));
    }
    Ok(out)
}

impl Template {
    /// A template of fixed text only.
    pub fn literal(text: &str) -> Template {
        Template {
            segs: vec![Seg::Lit(text.to_string())],
        }
    }

    /// Parses a template; `allowed` lists the placeholders this field may use.
    pub fn parse(text: &str, allowed: &[Var]) -> Result<Template, String> {
        let mut segs = Vec::new();
        for piece in split_placeholders(text)? {
            let name = match piece {
                Piece::Text(t) => {
                    segs.push(Seg::Lit(t));
                    continue;
                }
                Piece::Placeholder(name) => name,
            };
            let (var_name, width) = match name.split_once(':') {
                Some((v, w)) => {
                    let width = w
                        .strip_prefix('0')
                        .and_then(|d| d.parse::<usize>().ok())
                        .filter(|n| (1..=20).contains(n))
                        .ok_or_else(|| format!("`{{{name}}}`: width must look like `:06`"))?;
                    (v, width)
                }
                None => (name.as_str(), 0),
            };
            let var = match var_name {
                "id" => Var::Id,
                "index" => Var::Index,
                "cohort" => Var::Cohort,
                "profile" => Var::Profile,
                "device_id" => Var::DeviceId,
                "gateway" => Var::Gateway,
                "gateway_index" => Var::GatewayIndex,
                other => {
                    return Err(format!(
                        "unknown placeholder `{{{other}}}` (allowed: {})",
                        names(allowed)
                    ));
                }
            };
            if !allowed.contains(&var) {
                return Err(format!(
                    "placeholder `{{{var_name}}}` is not allowed here (allowed: {})",
                    names(allowed)
                ));
            }
            if width > 0 && !matches!(var, Var::Id | Var::Index | Var::GatewayIndex) {
                return Err(format!(
                    "`{{{name}}}`: only {{id}}, {{index}} and {{gateway_index}} take a width"
                ));
            }
            segs.push(Seg::Var(var, width));
        }
        Ok(Template { segs })
    }

    /// Appends the rendered template to `out`.
    pub fn render_into(&self, vars: &TemplateVars, out: &mut Vec<u8>) {
        for seg in &self.segs {
            match seg {
                Seg::Lit(s) => out.extend_from_slice(s.as_bytes()),
                Seg::Var(Var::Id, w) => push_padded(out, vars.id, *w),
                Seg::Var(Var::Index, w) => push_padded(out, vars.index, *w),
                Seg::Var(Var::Cohort, _) => out.extend_from_slice(vars.cohort.as_bytes()),
                Seg::Var(Var::Profile, _) => out.extend_from_slice(vars.profile.as_bytes()),
                Seg::Var(Var::DeviceId, _) => out.extend_from_slice(vars.device_id),
                Seg::Var(Var::Gateway, _) => out.extend_from_slice(vars.gateway),
                Seg::Var(Var::GatewayIndex, w) => push_padded(out, vars.gateway_index, *w),
            }
        }
    }

    /// Renders to a new string (for setup and tests; hot paths use `render_into`).
    pub fn render(&self, vars: &TemplateVars) -> String {
        let mut out = Vec::new();
        self.render_into(vars, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// True when the template contains MQTT wildcards or other characters a topic must not have.
    pub fn has_topic_wildcards(&self) -> bool {
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Lit(l) if l.contains(['+', '#', '\0'])))
    }

    /// True when the template uses the placeholder.
    pub fn uses(&self, var: Var) -> bool {
        self.segs
            .iter()
            .any(|s| matches!(s, Seg::Var(v, _) if *v == var))
    }

    /// The topic filter that matches this topic for every value of `var`: the one topic level
    /// that is exactly `{var}` becomes `+`. An error says why there is none: `var` missing,
    /// sharing its level with other text, or placeholders of `per_device` (values that differ
    /// between the devices the filter must cover) elsewhere.
    pub fn level_wildcard(&self, var: Var, per_device: &[Var]) -> Result<Template, String> {
        // Split the segments into topic levels (a literal may hold several `/`).
        let mut levels: Vec<Vec<Seg>> = vec![Vec::new()];
        for seg in &self.segs {
            match seg {
                Seg::Lit(text) => {
                    for (i, part) in text.split('/').enumerate() {
                        if i > 0 {
                            levels.push(Vec::new());
                        }
                        if !part.is_empty()
                            && let Some(level) = levels.last_mut()
                        {
                            level.push(Seg::Lit(part.to_string()));
                        }
                    }
                }
                Seg::Var(..) => {
                    if let Some(level) = levels.last_mut() {
                        level.push(seg.clone());
                    }
                }
            }
        }
        let name = names(&[var]);
        let mut found = false;
        let mut segs = Vec::new();
        for (i, level) in levels.iter().enumerate() {
            if i > 0 {
                segs.push(Seg::Lit("/".into()));
            }
            let is_var = |s: &Seg| matches!(s, Seg::Var(v, _) if *v == var);
            if level.len() == 1 && is_var(&level[0]) {
                if found {
                    return Err(format!("{name} may fill only one topic level"));
                }
                found = true;
                segs.push(Seg::Lit("+".into()));
                continue;
            }
            if level.iter().any(is_var) {
                return Err(format!(
                    "{name} must be a whole topic level (like `a/{name}/b`), not part of one"
                ));
            }
            if let Some(Seg::Var(v, _)) = level
                .iter()
                .find(|s| matches!(s, Seg::Var(v, _) if per_device.contains(v)))
            {
                return Err(format!(
                    "{} differs between devices: only {name} may",
                    names(&[*v])
                ));
            }
            segs.extend(level.iter().cloned());
        }
        if !found {
            return Err(format!("must contain {name} as a whole topic level"));
        }
        Ok(Template { segs })
    }
}

fn push_padded(out: &mut Vec<u8>, n: u32, width: usize) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(n);
    for _ in digits.len()..width {
        out.push(b'0');
    }
    let _ = out.write_all(digits.as_bytes());
}

fn names(allowed: &[Var]) -> String {
    allowed
        .iter()
        .map(|v| match v {
            Var::Id => "{id}",
            Var::Index => "{index}",
            Var::Cohort => "{cohort}",
            Var::Profile => "{profile}",
            Var::DeviceId => "{device_id}",
            Var::Gateway => "{gateway}",
            Var::GatewayIndex => "{gateway_index}",
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: &[Var] = &[
        Var::Id,
        Var::Index,
        Var::Cohort,
        Var::Profile,
        Var::DeviceId,
        Var::Gateway,
        Var::GatewayIndex,
    ];

    fn vars() -> TemplateVars<'static> {
        TemplateVars {
            id: 42,
            index: 7,
            cohort: "meters",
            profile: "smart-meter",
            device_id: b"meter-000042",
            gateway: b"gw-0003",
            gateway_index: 3,
        }
    }

    #[test]
    fn gateway_placeholders_render() {
        let t = Template::parse("{gateway}/{device_id}/t", ALL).unwrap();
        assert_eq!(t.render(&vars()), "gw-0003/meter-000042/t");
        let t = Template::parse("gw-{gateway_index:04}", ALL).unwrap();
        assert_eq!(t.render(&vars()), "gw-0003");
    }

    #[test]
    fn a_whole_level_placeholder_becomes_a_wildcard_filter() {
        let per_device = &[Var::Id, Var::Index];
        let t = Template::parse("fleet/{gateway}/{device_id}/cmd", ALL).unwrap();
        let f = t.level_wildcard(Var::DeviceId, per_device).unwrap();
        assert_eq!(f.render(&vars()), "fleet/gw-0003/+/cmd");
        let t = Template::parse("spBv1.0/g/DCMD/{gateway}/{device_id}", ALL).unwrap();
        let f = t.level_wildcard(Var::DeviceId, per_device).unwrap();
        assert_eq!(f.render(&vars()), "spBv1.0/g/DCMD/gw-0003/+");
        for (bad, why) in [
            ("c/dev-{device_id}", "whole topic level"),
            ("c/{gateway}/cmd", "must contain"),
            ("c/{index}/{device_id}", "differs between devices"),
            ("{device_id}/x/{device_id}", "only one topic level"),
        ] {
            let t = Template::parse(bad, ALL).unwrap();
            let e = t.level_wildcard(Var::DeviceId, per_device).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[test]
    fn placeholders_render_with_zero_padding() {
        let t = Template::parse("meter-{id:06}", ALL).unwrap();
        assert_eq!(t.render(&vars()), "meter-000042");
        let t = Template::parse("{profile}/{cohort}/{device_id}/t{index}", ALL).unwrap();
        assert_eq!(t.render(&vars()), "smart-meter/meters/meter-000042/t7");
    }

    #[test]
    fn doubled_braces_are_literal() {
        let t = Template::parse("a{{b}}", ALL).unwrap();
        assert_eq!(t.render(&vars()), "a{b}");
    }

    #[test]
    fn bad_templates_say_why() {
        assert!(
            Template::parse("x-{serial}", ALL)
                .unwrap_err()
                .contains("unknown placeholder `{serial}`")
        );
        assert!(
            Template::parse("x-{id", ALL)
                .unwrap_err()
                .contains("unclosed")
        );
        assert!(
            Template::parse("x-{device_id}", &[Var::Id])
                .unwrap_err()
                .contains("not allowed here")
        );
        assert!(
            Template::parse("x-{cohort:04}", ALL)
                .unwrap_err()
                .contains("take a width")
        );
        assert!(
            Template::parse("x-{id:ab}", ALL)
                .unwrap_err()
                .contains("width")
        );
    }

    #[test]
    fn wildcards_are_detected() {
        assert!(Template::parse("a/+/b", ALL).unwrap().has_topic_wildcards());
        assert!(
            !Template::parse("a/{id}/b", ALL)
                .unwrap()
                .has_topic_wildcards()
        );
    }
}
