//! Firmware models: one TOML file per firmware line (`firmware-models/*.toml`).
//!
//! Now: the versions of a line, their image sizes and how long each takes to boot. The OTA cycle
//! (stage durations and failure rates per version) extends this file format in its own issue.

use serde::Deserialize;

use crate::dist::{Dist, DistSpec};
use crate::error::{Checker, ConfigErrors};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub versions: Vec<FirmwareVersionRaw>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareVersionRaw {
    pub version: String,
    pub image_size_kb: u32,
    /// Seconds from power-on (or reboot) until the device tries to connect.
    pub boot_s: DistSpec,
    #[serde(default)]
    pub notes: String,
}

#[derive(Clone, Debug)]
pub struct FirmwareVersion {
    pub version: String,
    pub image_size_kb: u32,
    pub boot_s: Dist,
}

#[derive(Clone, Debug)]
pub struct FirmwareModel {
    pub name: String,
    pub description: String,
    pub versions: Vec<FirmwareVersion>,
}

impl FirmwareModel {
    pub fn version_index(&self, version: &str) -> Option<u16> {
        self.versions
            .iter()
            .position(|v| v.version == version)
            .and_then(|i| u16::try_from(i).ok())
    }

    pub fn version_list(&self) -> String {
        self.versions
            .iter()
            .map(|v| v.version.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `1.4.2`, `2.0.0-rc1`: dot-separated numbers with an optional suffix.
fn looks_like_version(v: &str) -> bool {
    let core = v.split(['-', '+']).next().unwrap_or("");
    !core.is_empty()
        && core
            .split('.')
            .all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()))
}

impl FirmwareFile {
    pub fn validate(&self, file: &str) -> Result<FirmwareModel, ConfigErrors> {
        let mut c = Checker::new(file);
        c.check(!self.name.is_empty(), "name", "\"\"", "must not be empty");
        c.check(
            !self.versions.is_empty(),
            "versions",
            "[]",
            "must list at least one version",
        );
        let mut versions = Vec::with_capacity(self.versions.len());
        for (i, v) in self.versions.iter().enumerate() {
            let key = format!("versions[{i}]");
            c.check(
                looks_like_version(&v.version),
                &format!("{key}.version"),
                format!("{:?}", v.version),
                "must look like 1.4.2 (numbers and dots, optional -suffix)",
            );
            if self.versions[..i].iter().any(|o| o.version == v.version) {
                c.fail(
                    &format!("{key}.version"),
                    format!("{:?}", v.version),
                    "is listed twice",
                );
            }
            c.check(
                v.image_size_kb > 0,
                &format!("{key}.image_size_kb"),
                v.image_size_kb,
                "must be > 0",
            );
            versions.push(FirmwareVersion {
                version: v.version.clone(),
                image_size_kb: v.image_size_kb,
                boot_s: Dist::validate(&v.boot_s, &format!("{key}.boot_s"), &mut c),
            });
        }
        c.errors.into_result(FirmwareModel {
            name: self.name.clone(),
            description: self.description.clone(),
            versions,
        })
    }
}
