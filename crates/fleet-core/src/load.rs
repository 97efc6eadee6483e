//! Reading files: a scenario with the profiles and firmware models it names, resolved into a
//! `Fleet`. Paths inside a file are relative to that file. Every problem in every file is
//! collected, so one pass explains all of them.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::error::{Checker, ConfigError, ConfigErrors};
use crate::firmware::{FirmwareFile, FirmwareModel};
use crate::ids::{CohortId, DeviceId};
use crate::profile::{LinkSpec, Profile, ProfileFile, validate_link};
use crate::scenario::{ScenarioFile, ScenarioSettings};

/// Where files come from: the file system, or files built into the binary (the demo).
pub trait FileSource {
    fn read(&self, path: &Path) -> Result<String, String>;
}

/// The file system.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsSource;

impl FileSource for FsSource {
    fn read(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))
    }
}

/// Files compiled into the binary, by relative path (`scenarios/demo.toml`).
#[derive(Clone, Copy, Debug)]
pub struct EmbeddedSource(pub &'static [(&'static str, &'static str)]);

impl FileSource for EmbeddedSource {
    fn read(&self, path: &Path) -> Result<String, String> {
        let key = normalize(path);
        self.0
            .iter()
            .find(|(name, _)| Path::new(name) == key)
            .map(|(_, text)| text.to_string())
            .ok_or_else(|| "no such built-in file".to_string())
    }
}

/// Lexically resolves `.` and `..` (no file-system access, so it works for built-in files too).
pub fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for comp in path.components() {
        match comp {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// A path named inside `base_file`, resolved against that file's folder.
pub fn relative_to(base_file: &Path, named: &str) -> PathBuf {
    let named = Path::new(named);
    if named.is_absolute() {
        return named.to_path_buf();
    }
    normalize(&base_file.parent().unwrap_or(Path::new("")).join(named))
}

/// Parses TOML into `T`, reporting the key path and line of the first problem.
pub fn parse_toml<T: DeserializeOwned>(file: &str, text: &str) -> Result<T, ConfigErrors> {
    let de =
        toml::Deserializer::parse(text).map_err(|e| toml_error(file, text, &e, String::new()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { String::new() } else { path };
        toml_error(file, text, e.inner(), key)
    })
}

fn toml_error(file: &str, text: &str, e: &toml::de::Error, key: String) -> ConfigErrors {
    let location = e
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
            format!(" (line {line}, column {col})")
        })
        .unwrap_or_default();
    let message = e.message().trim().to_string();
    ConfigError::without_value(file, key, format!("{message}{location}")).into()
}

/// What kind of file a TOML document is, judged by its top-level keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Scenario,
    Profile,
    Firmware,
}

pub fn detect_kind(file: &str, text: &str) -> Result<FileKind, ConfigErrors> {
    let table: toml::Table = parse_toml(file, text)?;
    if table.contains_key("cohorts") {
        Ok(FileKind::Scenario)
    } else if table.contains_key("identity") {
        Ok(FileKind::Profile)
    } else if table.contains_key("versions") {
        Ok(FileKind::Firmware)
    } else {
        Err(ConfigError::without_value(
            file,
            "",
            "is not a scenario (has `cohorts`), a device profile (has `identity`) or a firmware model (has `versions`)",
        )
        .into())
    }
}

/// One cohort with its files resolved.
#[derive(Clone, Debug)]
pub struct Cohort {
    pub id: CohortId,
    pub name: String,
    pub count: u32,
    /// Global id of the cohort's first device.
    pub first_device: u32,
    pub profile: Arc<Profile>,
    pub firmware: Arc<FirmwareModel>,
    pub firmware_version: u16,
    pub link: LinkSpec,
    /// The devices have an MQTT session (the profile's `mqtt.enabled`, or the cohort's `mqtt`).
    pub mqtt: bool,
    /// The profile's Modbus faults with the cohort's overrides (all zero without a register map).
    pub modbus_faults: crate::modbus::ModbusFaults,
}

/// A gateway of a cohort whose profile has `[gateway]`: its number in the cohort and its
/// children, the devices `first .. first + children` (the last gateway may have fewer).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatewayRef {
    pub index: u32,
    pub first: DeviceId,
    pub children: u32,
}

impl GatewayRef {
    /// Whether device `id` is one of this gateway's children.
    pub fn has_child(&self, id: DeviceId) -> bool {
        id.0 >= self.first.0 && id.0 - self.first.0 < self.children
    }
}

impl Cohort {
    /// The template placeholders of device `id` of this cohort, whose id renders as `device_id`.
    pub fn vars<'a>(
        &'a self,
        id: crate::DeviceId,
        device_id: &'a [u8],
    ) -> crate::template::TemplateVars<'a> {
        let index = id.0 - self.first_device;
        crate::template::TemplateVars {
            id: id.0,
            index,
            cohort: &self.name,
            profile: &self.profile.name,
            device_id,
            gateway: &[],
            gateway_index: self
                .profile
                .gateway
                .as_ref()
                .map_or(0, |g| index / g.children.max(1)),
        }
    }

    /// The placeholders of device `id`, a child of the gateway whose id renders as `gateway`.
    pub fn child_vars<'a>(
        &'a self,
        id: crate::DeviceId,
        device_id: &'a [u8],
        gateway: &'a [u8],
    ) -> crate::template::TemplateVars<'a> {
        crate::template::TemplateVars {
            gateway,
            ..self.vars(id, device_id)
        }
    }

    /// The gateway of device `id`, when the cohort's devices sit behind gateways (`[gateway]`
    /// in the profile and MQTT on). Children are grouped in id order: `children` per gateway.
    pub fn gateway_of(&self, id: DeviceId) -> Option<GatewayRef> {
        let g = self.profile.gateway.as_ref().filter(|_| self.mqtt)?;
        let per = g.children.max(1);
        let index = id.0.checked_sub(self.first_device)? / per;
        self.gateway_ref(index)
    }

    /// Gateway `index` of this cohort, if it has one.
    pub fn gateway_ref(&self, index: u32) -> Option<GatewayRef> {
        let g = self.profile.gateway.as_ref().filter(|_| self.mqtt)?;
        let per = g.children.max(1);
        let start = index.checked_mul(per).filter(|s| *s < self.count)?;
        Some(GatewayRef {
            index,
            first: DeviceId(self.first_device + start),
            children: per.min(self.count - start),
        })
    }

    /// The devices a process slice (`--shard K/N`) cuts the cohort between: its gateway's
    /// children, or single devices.
    pub fn slice_unit(&self) -> u32 {
        match self.profile.gateway.as_ref().filter(|_| self.mqtt) {
            Some(g) => g.children.max(1),
            None => 1,
        }
    }

    /// The cohort's devices in process slice `slice`: the slice's contiguous part, never
    /// cutting a gateway's children apart.
    pub fn in_slice(&self, slice: crate::slice::Slice) -> std::ops::Range<u32> {
        slice.of_units(self.first_device, self.count, self.slice_unit())
    }

    /// How many gateways the cohort's devices sit behind (0 without `[gateway]`).
    pub fn gateways(&self) -> u32 {
        match self.profile.gateway.as_ref().filter(|_| self.mqtt) {
            Some(g) => self.count.div_ceil(g.children.max(1)),
            None => 0,
        }
    }

    /// The MQTT sessions the cohort's devices need: one per gateway, or one per device.
    pub fn sessions(&self) -> u32 {
        match self.gateways() {
            0 if self.mqtt => self.count,
            0 => 0,
            n => n,
        }
    }

    /// The MQTT sessions the devices `ids` of this cohort need (a process's slice of it): one
    /// per device, or one per gateway any of them sits behind.
    pub fn sessions_in(&self, ids: std::ops::Range<u32>) -> u32 {
        if ids.is_empty() || !self.mqtt {
            return 0;
        }
        match &self.profile.gateway {
            None => ids.end - ids.start,
            Some(g) => {
                let per = g.children.max(1);
                let first = ids.start.saturating_sub(self.first_device) / per;
                let last = (ids.end - 1).saturating_sub(self.first_device) / per;
                last - first + 1
            }
        }
    }

    /// Renders gateway `index`'s id into `out`.
    pub fn render_gateway_id(&self, index: u32, out: &mut Vec<u8>) {
        if let Some(g) = &self.profile.gateway {
            let vars = crate::template::TemplateVars {
                id: 0,
                index: 0,
                cohort: &self.name,
                profile: &self.profile.name,
                device_id: &[],
                gateway: &[],
                gateway_index: index,
            };
            g.id.render_into(&vars, out);
        }
    }

    /// The placeholders of gateway `index` whose id renders as `gateway` (its client id and
    /// topics).
    pub fn gateway_vars<'a>(
        &'a self,
        index: u32,
        gateway: &'a [u8],
    ) -> crate::template::TemplateVars<'a> {
        crate::template::TemplateVars {
            id: 0,
            index: 0,
            cohort: &self.name,
            profile: &self.profile.name,
            device_id: &[],
            gateway,
            gateway_index: index,
        }
    }

    /// Renders device `id`'s device id (the profile's `identity.device_id`) into `out`.
    pub fn render_device_id(&self, id: crate::DeviceId, out: &mut Vec<u8>) {
        self.profile
            .identity
            .device_id
            .render_into(&self.vars(id, &[]), out);
    }
}

/// Where a cohort's Modbus register map is served (`Fleet::modbus_home`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModbusHome {
    Tcp,
    /// The scenario's `[[modbus.rtu]]` line with this index.
    Bus(usize),
    /// Each device's own serial port (fleet-serial).
    SerialPort,
}

/// A scenario resolved with everything it names: what the engine runs.
#[derive(Clone, Debug)]
pub struct Fleet {
    pub scenario_path: String,
    pub settings: ScenarioSettings,
    pub cohorts: Vec<Cohort>,
    /// The scenario's rollouts with their cohorts resolved (same order as `settings.rollouts`).
    pub rollouts: Vec<RolloutTargets>,
}

/// Which cohorts a rollout reaches.
#[derive(Clone, Debug)]
pub struct RolloutTargets {
    pub cohorts: Vec<CohortId>,
}

impl Fleet {
    /// Adds a rollout (`fleetsim rollout`) after loading; errors name `key`.
    pub fn add_rollout(
        &mut self,
        spec: crate::rollout::RolloutSpec,
        origin: &str,
    ) -> Result<(), ConfigErrors> {
        let targets = self.resolve_rollout(&spec, origin)?;
        self.settings.rollouts.push(spec);
        self.rollouts.push(targets);
        Ok(())
    }

    /// The targets `spec` would have in this fleet (checked like a scenario's rollouts, as the
    /// next one), without adding it.
    pub fn resolve_rollout(
        &self,
        spec: &crate::rollout::RolloutSpec,
        origin: &str,
    ) -> Result<RolloutTargets, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut settings = self.settings.clone();
        settings.rollouts.push(spec.clone());
        let mut all = resolve_rollouts(origin, &settings, &self.cohorts, &mut errors);
        match all.pop() {
            Some(t) if errors.is_empty() => Ok(t),
            _ => Err(errors),
        }
    }
}

impl Fleet {
    /// Every firmware version of the fleet's models ("model version"), and for each cohort the
    /// index of its model's first version in that list.
    pub fn version_labels(&self) -> (Vec<String>, Vec<u32>) {
        let mut labels: Vec<String> = Vec::new();
        let mut seen: Vec<(*const FirmwareModel, u32)> = Vec::new();
        let mut base = Vec::with_capacity(self.cohorts.len());
        for c in &self.cohorts {
            let ptr = Arc::as_ptr(&c.firmware);
            let b = match seen.iter().find(|(p, _)| *p == ptr) {
                Some((_, b)) => *b,
                None => {
                    let b = labels.len() as u32;
                    labels.extend(
                        c.firmware
                            .versions
                            .iter()
                            .map(|v| format!("{} {}", c.firmware.name, v.version)),
                    );
                    seen.push((ptr, b));
                    b
                }
            };
            base.push(b);
        }
        (labels, base)
    }

    pub fn total_devices(&self) -> u32 {
        self.cohorts.iter().map(|c| c.count).sum()
    }

    /// The cohort a device belongs to.
    pub fn cohort_of(&self, id: DeviceId) -> &Cohort {
        let i = self.cohorts.partition_point(|c| c.first_device <= id.0);
        &self.cohorts[i.saturating_sub(1)]
    }

    /// Where a cohort's register map is served, if it has one: on a `[[modbus.rtu]]` line of
    /// the scenario (its index), on a serial port of each device's own (a `modbus_rtu`
    /// persona), or over Modbus TCP.
    pub fn modbus_home(&self, c: &Cohort) -> Option<ModbusHome> {
        c.profile.modbus.as_ref()?;
        if let Some(i) = self
            .settings
            .modbus
            .rtu
            .iter()
            .position(|b| b.cohort == c.name)
        {
            return Some(ModbusHome::Bus(i));
        }
        let own_port = c
            .profile
            .serial
            .as_ref()
            .is_some_and(|s| matches!(s.persona, crate::serial::Persona::ModbusRtu));
        Some(if own_port {
            ModbusHome::SerialPort
        } else {
            ModbusHome::Tcp
        })
    }

    /// Whether each device of the cohort gets a serial port of its own (a `[serial]` persona,
    /// unless the cohort sits on a shared Modbus RTU line).
    pub fn has_serial_ports(&self, c: &Cohort) -> bool {
        c.profile.serial.is_some() && !matches!(self.modbus_home(c), Some(ModbusHome::Bus(_)))
    }

    /// Scales cohort counts in proportion so they add up to `total` (largest remainder).
    pub fn scale_to(&mut self, total: u32) {
        let current: u64 = self.cohorts.iter().map(|c| u64::from(c.count)).sum();
        if current == 0 {
            return;
        }
        let mut counts: Vec<(usize, u32, u64)> = self
            .cohorts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let exact = u64::from(c.count) * u64::from(total);
                (i, (exact / current) as u32, exact % current)
            })
            .collect();
        let assigned: u32 = counts.iter().map(|c| c.1).sum();
        let mut order: Vec<usize> = (0..counts.len()).collect();
        order.sort_by(|a, b| counts[*b].2.cmp(&counts[*a].2).then(a.cmp(b)));
        for &i in order.iter().take((total - assigned) as usize) {
            counts[i].1 += 1;
        }
        for (i, count, _) in counts {
            self.cohorts[i].count = count;
        }
        self.renumber();
    }

    fn renumber(&mut self) {
        let mut next = 0u32;
        for c in &mut self.cohorts {
            c.first_device = next;
            next = next.saturating_add(c.count);
        }
    }
}

/// Loads and validates a scenario and everything it names.
pub fn load_fleet(source: &dyn FileSource, path: &Path) -> Result<Fleet, ConfigErrors> {
    let file = path.display().to_string();
    let text = source
        .read(path)
        .map_err(|e| ConfigError::without_value(&file, "", e))?;
    let raw: ScenarioFile = parse_toml(&file, &text)?;
    let mut errors = ConfigErrors::default();
    let settings = raw
        .validate_settings(&file)
        .map_err(|e| errors.extend(e))
        .ok();

    let mut profiles: HashMap<PathBuf, Option<(Arc<Profile>, PathBuf)>> = HashMap::new();
    let mut models: HashMap<PathBuf, Option<Arc<FirmwareModel>>> = HashMap::new();
    let mut cohorts = Vec::new();
    let mut next_id = 0u64;
    for (i, c) in raw.cohorts.iter().enumerate() {
        let key = format!("cohorts[{i}]");
        let profile_path = relative_to(path, &c.profile);
        if !profiles.contains_key(&profile_path)
            && let Err(e) = source.read(&profile_path)
        {
            errors.push(ConfigError::new(
                &file,
                format!("{key}.profile"),
                format!("{:?}", c.profile),
                format!("names {}: {e}", profile_path.display()),
            ));
            profiles.insert(profile_path, None);
            continue;
        }
        let loaded = profiles
            .entry(profile_path.clone())
            .or_insert_with(|| match load_profile(source, &profile_path) {
                Ok(p) => Some((Arc::new(p), profile_path.clone())),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            })
            .clone();
        let Some((mut profile, profile_path)) = loaded else {
            continue;
        };
        if let Some(protocol) = c.ota_protocol {
            match &profile.ota {
                Some(o) if o.protocol != protocol => {
                    let mut p = (*profile).clone();
                    if let Some(o) = &mut p.ota {
                        o.protocol = protocol;
                    }
                    profile = Arc::new(p);
                }
                Some(_) => {}
                None => errors.push(ConfigError::new(
                    &file,
                    format!("{key}.ota_protocol"),
                    format!("{:?}", protocol.as_str()),
                    format!(
                        "the cohort's profile ({}) has no [ota] table to set the protocol of",
                        profile_path.display()
                    ),
                )),
            }
        }
        let model_path = relative_to(&profile_path, &profile.firmware_model);
        if !models.contains_key(&model_path)
            && let Err(e) = source.read(&model_path)
        {
            errors.push(ConfigError::new(
                &profile_path.display().to_string(),
                "firmware.model",
                format!("{:?}", profile.firmware_model),
                format!(
                    "names {}: {e} (used by {file}: {key})",
                    model_path.display()
                ),
            ));
            models.insert(model_path, None);
            continue;
        }
        let model = models
            .entry(model_path.clone())
            .or_insert_with(|| match load_firmware(source, &model_path) {
                Ok(m) => Some(Arc::new(m)),
                Err(e) => {
                    errors.extend(e);
                    None
                }
            })
            .clone();
        let Some(model) = model else { continue };
        let mut ck = Checker::new(&file);
        let version = c
            .firmware_version
            .as_deref()
            .unwrap_or(&profile.firmware_version);
        let version_key = if c.firmware_version.is_some() {
            format!("{key}.firmware_version")
        } else {
            format!(
                "{key}.profile ({}: firmware.version)",
                profile_path.display()
            )
        };
        let firmware_version = match model.version_index(version) {
            Some(v) => v,
            None => {
                ck.fail(
                    &version_key,
                    format!("{version:?}"),
                    format!(
                        "is not a version of firmware model {} (versions: {})",
                        model.name,
                        model.version_list()
                    ),
                );
                0
            }
        };
        let link = match &c.link {
            Some(over) => validate_link(
                &mut ck,
                &format!("{key}.link"),
                &profile.link_raw.overridden_by(over),
            ),
            None => profile.link.clone(),
        };
        let modbus_faults = match (&profile.modbus, &c.modbus_faults) {
            (Some(map), Some(over)) => crate::modbus::ModbusFaults::validate(
                &mut ck,
                &format!("{key}.modbus_faults"),
                &map.faults_raw.overridden_by(over),
            ),
            (Some(map), None) => map.faults.clone(),
            (None, Some(_)) => {
                ck.fail_key(
                    &format!("{key}.modbus_faults"),
                    format!(
                        "the cohort's profile ({}) has no [modbus] table",
                        profile_path.display()
                    ),
                );
                crate::modbus::ModbusFaults::default()
            }
            (None, None) => crate::modbus::ModbusFaults::default(),
        };
        let mqtt = c.mqtt.unwrap_or(profile.mqtt.enabled);
        if c.mqtt == Some(true) && !profile.mqtt.enabled {
            ck.fail_key(
                &format!("{key}.mqtt"),
                format!(
                    "the profile ({}) has mqtt.enabled = false (no topics to publish on)",
                    profile_path.display()
                ),
            );
        }
        if !mqtt && profile.modbus.is_none() && profile.serial.is_none() {
            ck.fail_key(
                &format!("{key}.mqtt"),
                "is false and the profile has no [modbus] or [serial] table: the devices would have no way to be seen",
            );
        }
        errors.extend(ck.errors);
        if c.count == 0 {
            errors.push(ConfigError::new(
                &file,
                format!("{key}.count"),
                0,
                "must be at least 1",
            ));
        }
        next_id += u64::from(c.count);
        cohorts.push(Cohort {
            id: CohortId(i as u16),
            name: c.name.clone(),
            count: c.count,
            first_device: 0,
            profile,
            firmware: model,
            firmware_version,
            link,
            mqtt,
            modbus_faults,
        });
    }
    check_distinct_device_ids(&file, &raw, &cohorts, &mut errors);
    check_distinct_gateway_ids(&file, &raw, &cohorts, &mut errors);
    let rollouts = match &settings {
        Some(s) => resolve_rollouts(&file, s, &cohorts, &mut errors),
        None => Vec::new(),
    };
    check_modbus_targets(&file, &raw, &cohorts, &mut errors);
    if next_id > u64::from(MAX_DEVICES) {
        errors.push(ConfigError::new(
            &file,
            "cohorts[*].count",
            next_id,
            format!("the fleet may hold at most {MAX_DEVICES} devices per process: make it smaller (--devices N scales every cohort)"),
        ));
    }
    if raw.cohorts.len() > usize::from(u16::MAX) {
        errors.push(ConfigError::new(
            &file,
            "cohorts",
            raw.cohorts.len(),
            "at most 65535 cohorts",
        ));
    }
    let settings = match settings {
        Some(s) if errors.is_empty() => s,
        _ => return Err(errors),
    };
    let mut fleet = Fleet {
        scenario_path: file,
        settings,
        cohorts,
        rollouts,
    };
    fleet.renumber();
    Ok(fleet)
}

/// Modbus faults and RTU lines must aim at cohorts whose profile has a register map.
fn check_modbus_targets(
    file: &str,
    raw: &ScenarioFile,
    cohorts: &[Cohort],
    errors: &mut ConfigErrors,
) {
    use crate::scenario::EventKind;
    let has_map = |name: &str| {
        cohorts
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.profile.modbus.is_some())
    };
    for (i, e) in raw.events.iter().enumerate() {
        if e.kind != EventKind::ModbusFault {
            continue;
        }
        match &e.cohort {
            Some(name) if has_map(name) == Some(false) => {
                errors.push(ConfigError::new(
                    file,
                    format!("events[{i}].cohort"),
                    format!("{name:?}"),
                    "has no register map ([modbus] in its profile): a Modbus fault would touch nothing",
                ));
            }
            Some(_) => {}
            None if !cohorts.iter().any(|c| c.profile.modbus.is_some()) => {
                errors.push(ConfigError::without_value(
                    file,
                    format!("events[{i}].kind"),
                    "modbus_fault, but no cohort's profile has a register map ([modbus])",
                ));
            }
            None => {}
        }
    }
    let has_serial = |name: &str| {
        cohorts
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.profile.serial.is_some())
    };
    for (i, e) in raw.events.iter().enumerate() {
        if e.kind != EventKind::Unplug {
            continue;
        }
        let ok = match &e.cohort {
            Some(name) => has_serial(name) != Some(false),
            None => cohorts.iter().any(|c| c.profile.serial.is_some()),
        };
        if !ok {
            errors.push(ConfigError::without_value(
                file,
                format!("events[{i}].kind"),
                "unplug, but the devices it aims at have no serial port ([serial] in their profile)",
            ));
        }
    }
    for (i, p) in raw.serial.iter().enumerate() {
        if has_serial(&p.cohort) == Some(false) {
            errors.push(ConfigError::new(
                file,
                format!("serial[{i}].cohort"),
                format!("{:?}", p.cohort),
                "has no serial persona ([serial] in its profile)",
            ));
        }
        if p.port != "pty"
            && let Some(c) = cohorts.iter().find(|c| c.name == p.cohort)
            && c.count != 1
        {
            errors.push(ConfigError::new(
                file,
                format!("serial[{i}].port"),
                format!("{:?}", p.port),
                format!(
                    "a real port serves one device, and cohort {:?} has {}: give it count = 1",
                    p.cohort, c.count
                ),
            ));
        }
    }
    for (i, b) in raw.modbus.rtu.iter().enumerate() {
        if has_map(&b.cohort) == Some(false) {
            errors.push(ConfigError::new(
                file,
                format!("modbus.rtu[{i}].cohort"),
                format!("{:?}", b.cohort),
                "has no register map ([modbus] in its profile): nothing to serve on the line",
            ));
        }
    }
}

/// Two cohorts whose device id templates are the same and use neither `{id}` (unique across the
/// fleet) nor `{cohort}` give their devices the same ids: brokers would see duplicate client ids.
fn check_distinct_device_ids(
    file: &str,
    raw: &ScenarioFile,
    cohorts: &[Cohort],
    errors: &mut ConfigErrors,
) {
    use crate::template::Var;
    for (i, a) in cohorts.iter().enumerate() {
        let ta = &a.profile.identity.device_id;
        if ta.uses(Var::Id) || ta.uses(Var::Cohort) {
            continue;
        }
        if let Some(b) = cohorts[..i]
            .iter()
            .find(|b| &b.profile.identity.device_id == ta)
        {
            errors.push(ConfigError::new(
                file,
                format!("cohorts[{i}].profile"),
                format!("{:?}", raw.cohorts.get(i).map(|c| c.profile.as_str()).unwrap_or("")),
                format!(
                    "gives the same device ids as cohort {:?}: its identity.device_id uses {{index}} without {{cohort}}; \
                     use {{id}} (unique across the fleet) or add {{cohort}}",
                    b.name
                ),
            ));
        }
    }
}

/// Two gateway cohorts whose gateway id templates are the same and do not use `{cohort}` give
/// their gateways the same ids, so the same MQTT client ids: the broker would keep only one.
fn check_distinct_gateway_ids(
    file: &str,
    raw: &ScenarioFile,
    cohorts: &[Cohort],
    errors: &mut ConfigErrors,
) {
    use crate::template::Var;
    for (i, a) in cohorts.iter().enumerate() {
        let Some(ga) = &a.profile.gateway else {
            continue;
        };
        if ga.id.uses(Var::Cohort) {
            continue;
        }
        if let Some(b) = cohorts[..i]
            .iter()
            .find(|b| b.profile.gateway.as_ref().is_some_and(|gb| gb.id == ga.id))
        {
            errors.push(ConfigError::new(
                file,
                format!("cohorts[{i}].profile"),
                format!("{:?}", raw.cohorts.get(i).map(|c| c.profile.as_str()).unwrap_or("")),
                format!(
                    "gives the same gateway ids as cohort {:?}: its gateway.id does not use {{cohort}}, \
                     so both cohorts' gateways would share MQTT client ids; add {{cohort}} to gateway.id",
                    b.name
                ),
            ));
        }
    }
}

/// The most devices one process simulates (ids are u32 and per-process tables are indexed by them).
pub const MAX_DEVICES: u32 = 50_000_000;

pub fn load_profile(source: &dyn FileSource, path: &Path) -> Result<Profile, ConfigErrors> {
    let file = path.display().to_string();
    let text = source
        .read(path)
        .map_err(|e| ConfigError::without_value(&file, "", e))?;
    let raw: ProfileFile = parse_toml(&file, &text)?;
    raw.validate(&file)
}

pub fn load_firmware(source: &dyn FileSource, path: &Path) -> Result<FirmwareModel, ConfigErrors> {
    let file = path.display().to_string();
    let text = source
        .read(path)
        .map_err(|e| ConfigError::without_value(&file, "", e))?;
    let raw: FirmwareFile = parse_toml(&file, &text)?;
    raw.validate(&file)
}

/// Validates any of the three file kinds; scenarios are checked with everything they name.
pub fn validate_file(source: &dyn FileSource, path: &Path) -> Result<FileKind, ConfigErrors> {
    let file = path.display().to_string();
    let text = source
        .read(path)
        .map_err(|e| ConfigError::without_value(&file, "", e))?;
    let kind = detect_kind(&file, &text)?;
    match kind {
        FileKind::Scenario => load_fleet(source, path).map(|_| kind),
        FileKind::Profile => {
            let profile = load_profile(source, path)?;
            // A profile is only usable with its firmware model: check that too.
            let model = load_firmware(source, &relative_to(path, &profile.firmware_model))?;
            match model.version_index(&profile.firmware_version) {
                Some(_) => Ok(kind),
                None => Err(ConfigError::new(
                    &file,
                    "firmware.version",
                    format!("{:?}", profile.firmware_version),
                    format!(
                        "is not a version of firmware model {} (versions: {})",
                        model.name,
                        model.version_list()
                    ),
                )
                .into()),
            }
        }
        FileKind::Firmware => load_firmware(source, path).map(|_| kind),
    }
}

/// Resolves each rollout's cohorts: named ones must have `[ota]` and the target version;
/// without names, every cohort that does.
fn resolve_rollouts(
    file: &str,
    settings: &ScenarioSettings,
    cohorts: &[Cohort],
    errors: &mut ConfigErrors,
) -> Vec<RolloutTargets> {
    settings
        .rollouts
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let key = format!("rollouts[{i}]");
            let fits = |c: &Cohort| {
                c.profile.ota.is_some() && c.firmware.version_index(&r.target_version).is_some()
            };
            let chosen: Vec<CohortId> = if r.cohorts.is_empty() {
                cohorts.iter().filter(|c| fits(c)).map(|c| c.id).collect()
            } else {
                let mut v = Vec::new();
                for name in &r.cohorts {
                    let Some(c) = cohorts.iter().find(|c| &c.name == name) else {
                        continue; // reported by the scenario's own checks
                    };
                    if c.profile.ota.is_none() {
                        errors.push(ConfigError::new(
                            file,
                            format!("{key}.cohorts"),
                            format!("{name:?}"),
                            format!("the cohort's profile ({}) has no [ota] table: its devices take no updates", c.profile.name),
                        ));
                    } else if c.firmware.version_index(&r.target_version).is_none() {
                        errors.push(ConfigError::new(
                            file,
                            format!("{key}.target_version"),
                            format!("{:?}", r.target_version),
                            format!(
                                "is not a version of firmware model {} of cohort {name:?} (versions: {})",
                                c.firmware.name,
                                c.firmware.version_list()
                            ),
                        ));
                    } else {
                        v.push(c.id);
                    }
                }
                v
            };
            if chosen.is_empty() && r.cohorts.is_empty() {
                errors.push(ConfigError::new(
                    file,
                    format!("{key}.target_version"),
                    format!("{:?}", r.target_version),
                    "no cohort can take it: none has a profile with [ota] and a firmware model with this version",
                ));
            }
            RolloutTargets { cohorts: chosen }
        })
        .collect()
}
