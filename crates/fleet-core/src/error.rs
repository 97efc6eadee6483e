//! Configuration errors that name the file, the key, the value and what was expected.

use std::fmt;

/// One problem in one file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file as the user named it (or `<built-in>/…` for embedded files).
    pub file: String,
    /// Key path inside the file, like `cohorts[1].count` (empty when the whole file is at fault).
    pub key: String,
    /// The offending value as written, when there is one.
    pub value: Option<String>,
    /// What was expected, or what went wrong.
    pub message: String,
}

impl ConfigError {
    pub fn new(
        file: &str,
        key: impl Into<String>,
        value: impl fmt::Display,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_string(),
            key: key.into(),
            value: Some(value.to_string()),
            message: message.into(),
        }
    }

    pub fn without_value(file: &str, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_string(),
            key: key.into(),
            value: None,
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        if let Some(value) = &self.value {
            write!(f, " = {value}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a set of files. Validation collects them all instead of stopping at
/// the first, so one `fleetsim validate` run explains everything that needs fixing.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    pub fn push(&mut self, e: ConfigError) {
        self.0.push(e);
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn extend(&mut self, other: ConfigErrors) {
        self.0.extend(other.0);
    }
    /// `Ok(value)` when no problem was recorded.
    pub fn into_result<T>(self, value: T) -> Result<T, ConfigErrors> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

/// Collects errors under a file name and a key prefix while validating nested sections.
pub struct Checker<'a> {
    pub file: &'a str,
    pub errors: ConfigErrors,
}

impl<'a> Checker<'a> {
    pub fn new(file: &'a str) -> Self {
        Checker {
            file,
            errors: ConfigErrors::default(),
        }
    }

    pub fn fail(&mut self, key: &str, value: impl fmt::Display, expected: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, key, value, expected));
    }

    pub fn fail_key(&mut self, key: &str, message: impl Into<String>) {
        self.errors
            .push(ConfigError::without_value(self.file, key, message));
    }

    /// Records a problem unless `ok`.
    pub fn check(&mut self, ok: bool, key: &str, value: impl fmt::Display, expected: &str) {
        if !ok {
            self.fail(key, value, expected);
        }
    }

    pub fn finite_at_least(&mut self, key: &str, value: f64, min: f64) {
        self.check(
            value.is_finite() && value >= min,
            key,
            value,
            &format!("must be a number >= {min}"),
        );
    }

    pub fn probability(&mut self, key: &str, value: f64) {
        self.check(
            (0.0..=1.0).contains(&value),
            key,
            value,
            "must be a probability between 0 and 1",
        );
    }
}
