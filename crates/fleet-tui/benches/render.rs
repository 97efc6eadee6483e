//! Frame cost: the overview and firmware screens of the 100,000-device fixture drawn into a
//! 200x60 `TestBackend` (render + buffer diff, as the terminal loop does it).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fleet_tui::{Tab, fixture, render};
use ratatui::Terminal;
use ratatui::backend::TestBackend;

fn bench_tab(c: &mut Criterion, name: &str, tab: Tab) {
    let snap = fixture::snapshot();
    let mut app = fixture::app_with_history(120);
    app.tab = tab;
    // TestBackend cannot fail (its error type is Infallible).
    let Ok(mut terminal) = Terminal::new(TestBackend::new(200, 60));
    c.bench_function(name, |b| {
        b.iter(|| {
            let _ = terminal.draw(|f| render(f, black_box(&app), black_box(&snap)));
        })
    });
}

fn frames(c: &mut Criterion) {
    bench_tab(c, "render_overview_200x60", Tab::Overview);
    bench_tab(c, "render_firmware_200x60", Tab::Firmware);
}

criterion_group!(benches, frames);
criterion_main!(benches);
