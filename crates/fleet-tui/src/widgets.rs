//! Shared bits of the screens: the colour theme (off under `NO_COLOR`), number and time
//! formatting, text bars, key/value lines and centred popups.

use ratatui::Frame;
use ratatui::layout::{Constraint, Flex, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, BorderType, Borders, Paragraph};

/// Colours of the dashboard. With `color` off every style keeps its modifiers (bold, reversed)
/// but no colour, as `NO_COLOR` asks.
#[derive(Clone, Copy, Debug)]
pub struct Theme {
    pub color: bool,
}

impl Theme {
    fn fg(self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }
    pub fn ok(self) -> Style {
        self.fg(Color::Green)
    }
    pub fn warn(self) -> Style {
        self.fg(Color::Yellow)
    }
    pub fn err(self) -> Style {
        self.fg(Color::Red)
    }
    pub fn accent(self) -> Style {
        self.fg(Color::Cyan)
    }
    pub fn info(self) -> Style {
        self.fg(Color::Blue)
    }
    pub fn magenta(self) -> Style {
        self.fg(Color::Magenta)
    }
    pub fn dim(self) -> Style {
        if self.color {
            Style::new().fg(Color::DarkGray)
        } else {
            Style::new().add_modifier(Modifier::DIM)
        }
    }
    pub fn bold(self) -> Style {
        Style::new().add_modifier(Modifier::BOLD)
    }
    /// Red when `bad`, plain otherwise: for error counts.
    pub fn err_if(self, bad: bool) -> Style {
        if bad { self.err() } else { Style::new() }
    }
    /// A bordered block with a title.
    pub fn block(self, title: &str) -> Block<'static> {
        Block::new()
            .borders(Borders::ALL)
            .border_type(BorderType::Rounded)
            .border_style(self.dim())
            .title(Span::styled(format!(" {title} "), self.bold()))
    }
}

pub use fleet_metrics::thousands as count;

/// A rate: thousands separated, one decimal below 100.
pub fn rate(x: f64) -> String {
    if !x.is_finite() || x <= 0.0 {
        "0".into()
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        count(x.round() as u64)
    }
}

/// A short count for narrow places: `12.3k`, `4.5M`.
pub fn short(n: u64) -> String {
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => trim_one(n as f64 / 1e3, "k"),
        1_000_000..1_000_000_000 => trim_one(n as f64 / 1e6, "M"),
        _ => trim_one(n as f64 / 1e9, "G"),
    }
}

fn trim_one(x: f64, unit: &str) -> String {
    if x >= 100.0 {
        format!("{x:.0}{unit}")
    } else {
        format!("{x:.1}{unit}")
    }
}

/// A latency in microseconds, three significant figures: `850µs`, `12.3ms`, `1.25s`.
pub fn micros(us: u64) -> String {
    let x = us as f64;
    if us < 1_000 {
        format!("{us}µs")
    } else if us < 1_000_000 {
        sig3(x / 1e3, "ms")
    } else if us < 60_000_000 {
        sig3(x / 1e6, "s")
    } else {
        clock(x / 1e6)
    }
}

fn sig3(x: f64, unit: &str) -> String {
    if x < 10.0 {
        format!("{x:.2}{unit}")
    } else if x < 100.0 {
        format!("{x:.1}{unit}")
    } else {
        format!("{x:.0}{unit}")
    }
}

/// Seconds as `HH:MM:SS` (`2d 03:00:00` past a day).
pub fn clock(s: f64) -> String {
    let total = if s.is_finite() && s > 0.0 {
        s.round() as u64
    } else {
        0
    };
    let (d, rest) = (total / 86_400, total % 86_400);
    let hms = format!(
        "{:02}:{:02}:{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    );
    if d > 0 { format!("{d}d {hms}") } else { hms }
}

/// Seconds with one decimal: `312.4s`.
pub fn secs(s: f64) -> String {
    format!("{s:.1}s")
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut unit = 0;
    while x >= 1024.0 && unit + 1 < UNITS.len() {
        x /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{x:.1} {}", UNITS[unit])
    }
}

/// `part` of `total` as a percentage with one decimal.
pub fn percent(part: u64, total: u64) -> String {
    if total == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / total as f64)
    }
}

/// A horizontal bar `width` cells wide, filled to `part / total` with eighth blocks.
pub fn bar(part: u64, total: u64, width: usize) -> String {
    const EIGHTHS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    if total == 0 || width == 0 {
        return " ".repeat(width);
    }
    let ratio = (part as f64 / total as f64).clamp(0.0, 1.0);
    let eighths = (ratio * width as f64 * 8.0).round() as usize;
    let (full, rem) = (eighths / 8, eighths % 8);
    let mut s = String::with_capacity(width * 3);
    for _ in 0..full.min(width) {
        s.push('█');
    }
    if full < width {
        s.push(EIGHTHS[rem]);
        for _ in full + 1..width {
            s.push(' ');
        }
    }
    s
}

/// One line of a bar list: `label  count  bar  share`.
pub fn bar_line(
    label: &str,
    label_width: usize,
    part: u64,
    total: u64,
    bar_width: usize,
    style: Style,
) -> Line<'static> {
    Line::from(vec![
        Span::raw(format!("{label:<label_width$} ")),
        Span::raw(format!("{:>11} ", count(part))),
        Span::styled(bar(part, total, bar_width), style),
        Span::raw(format!(" {:>6}", percent(part, total))),
    ])
}

/// The bar width that leaves room for a `bar_line`'s label, count and share in `width`.
pub fn bar_width_for(width: u16, label_width: usize) -> usize {
    usize::from(width).saturating_sub(label_width + 1 + 12 + 7)
}

/// One `key value` entry of a grid.
#[derive(Clone, Debug)]
pub struct Kv {
    pub key: String,
    pub value: String,
    pub style: Style,
}

/// A `Kv` with a plain value.
pub fn item(key: impl Into<String>, value: String) -> Kv {
    Kv {
        key: key.into(),
        value,
        style: Style::new(),
    }
}

/// A `Kv` with a styled value.
pub fn styled(key: impl Into<String>, value: String, style: Style) -> Kv {
    Kv {
        key: key.into(),
        value,
        style,
    }
}

/// Key/value entries in `cols` columns filled top to bottom; keys padded, values right-aligned
/// within each column.
pub fn kv_grid(frame: &mut Frame, area: Rect, items: &[Kv], cols: usize, key_style: Style) {
    let cols = cols.max(1);
    let per_col = items.len().div_ceil(cols).max(1);
    let areas = Layout::horizontal(vec![Constraint::Fill(1); cols])
        .spacing(2)
        .split(area);
    for (chunk, col) in items.chunks(per_col).zip(areas.iter()) {
        let key_w = chunk
            .iter()
            .map(|k| k.key.chars().count())
            .max()
            .unwrap_or(0);
        let val_w = chunk
            .iter()
            .map(|k| k.value.chars().count())
            .max()
            .unwrap_or(0);
        let lines: Vec<Line> = chunk
            .iter()
            .map(|k| {
                Line::from(vec![
                    Span::styled(format!("{:<key_w$} ", k.key), key_style),
                    Span::styled(format!("{:>val_w$}", k.value), k.style),
                ])
            })
            .collect();
        frame.render_widget(Paragraph::new(lines), *col);
    }
}

/// Rows a `kv_grid` of `n` entries in `cols` columns takes.
pub fn grid_rows(n: usize, cols: usize) -> u16 {
    u16::try_from(n.div_ceil(cols.max(1))).unwrap_or(u16::MAX)
}

/// A rectangle of `width` x `height` centred in `area` (clipped to it).
pub fn centered(area: Rect, width: u16, height: u16) -> Rect {
    let [row] = Layout::vertical([Constraint::Length(height.min(area.height))])
        .flex(Flex::Center)
        .areas(area);
    let [rect] = Layout::horizontal([Constraint::Length(width.min(area.width))])
        .flex(Flex::Center)
        .areas(row);
    rect
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_000_000), "1,000,000");
        assert_eq!(short(12_345), "12.3k");
        assert_eq!(short(4_500_000), "4.5M");
    }

    #[test]
    fn latencies_keep_three_significant_figures() {
        assert_eq!(micros(850), "850µs");
        assert_eq!(micros(12_345), "12.3ms");
        assert_eq!(micros(1_250_000), "1.25s");
        assert_eq!(micros(125_000_000), "00:02:05");
    }

    #[test]
    fn bars_fill_their_width_in_proportion() {
        assert_eq!(bar(1, 2, 4).chars().filter(|c| *c == '█').count(), 2);
        assert_eq!(bar(2, 2, 4), "████");
        assert_eq!(bar(0, 2, 3), "   ");
        assert_eq!(bar(5, 0, 3), "   ");
        assert_eq!(bar(1, 2, 4).chars().count(), 4);
    }

    #[test]
    fn clock_shows_days_past_a_day() {
        assert_eq!(clock(300.0), "00:05:00");
        assert_eq!(clock(90_061.0), "1d 01:01:01");
    }
}
