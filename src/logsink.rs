//! Where log lines go: stderr, or a file while the dashboard owns the terminal.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};

static FILE: Mutex<Option<File>> = Mutex::new(None);

/// The writer tracing uses: the file when one is set, stderr otherwise.
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match FILE.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match FILE.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            Some(f) => f.flush(),
            None => io::stderr().flush(),
        }
    }
}

/// Sends log lines to `path` (appending) until `to_stderr`.
pub fn to_file(path: &Path) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *FILE.lock().unwrap_or_else(PoisonError::into_inner) = Some(f);
    Ok(())
}

pub fn to_stderr() {
    FILE.lock().unwrap_or_else(PoisonError::into_inner).take();
}
