//! Firmware models: one TOML file per firmware line (`firmware-models/*.toml`).
//!
//! The versions of a line, their image sizes and how long each takes to boot, and the OTA cycle:
//! how long each stage of an A/B update takes and how often it fails (`[ota]`, `[ota.faults]`),
//! for the whole line or per version (`[versions.faults]`, the release being installed).

use serde::Deserialize;

use crate::defaults;
use crate::dist::{Dist, DistSpec};
use crate::error::{Checker, ConfigErrors};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirmwareFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub versions: Vec<FirmwareVersionRaw>,
    /// Stage durations and failure rates of the update cycle (defaults: a quick, faultless cycle).
    #[serde(default)]
    pub ota: OtaRaw,
}

/// `[ota]`: how an update to any version of this line goes, unless the version says otherwise.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaRaw {
    /// Seconds to check the downloaded image (size, hash, signature).
    #[serde(default = "defaults::ota_verify_s")]
    pub verify_s: DistSpec,
    /// Seconds to write the image to the inactive slot.
    #[serde(default = "defaults::ota_install_s")]
    pub install_s: DistSpec,
    /// Seconds the new image runs on trial after it booted; then its health check decides
    /// (`trial_failure`) whether the device commits it or rolls back.
    #[serde(default = "defaults::ota_trial_s")]
    pub trial_s: DistSpec,
    /// Boots of the new image the bootloader tries before it rolls back to the old slot.
    #[serde(default = "defaults::ota_max_boot_attempts")]
    pub max_boot_attempts: u8,
    /// Download attempts (after stalls the device gives up on, or HTTP errors) before failing.
    #[serde(default = "defaults::ota_download_attempts")]
    pub download_attempts: u8,
    /// A download that makes no progress for this long is abandoned and retried.
    #[serde(default = "defaults::ota_stall_timeout")]
    pub stall_timeout: String,
    #[serde(default)]
    pub faults: OtaFaultsRaw,
}

impl Default for OtaRaw {
    fn default() -> Self {
        OtaRaw {
            verify_s: defaults::ota_verify_s(),
            install_s: defaults::ota_install_s(),
            trial_s: defaults::ota_trial_s(),
            max_boot_attempts: defaults::ota_max_boot_attempts(),
            download_attempts: defaults::ota_download_attempts(),
            stall_timeout: defaults::ota_stall_timeout(),
            faults: OtaFaultsRaw::default(),
        }
    }
}

/// Fault probabilities of one update (each in [0, 1]); every key optional, so a version can
/// override only some of its line's.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OtaFaultsRaw {
    /// The download stops making progress for `stall_s`.
    pub download_stall: Option<f64>,
    /// How long a stall lasts, seconds.
    pub stall_s: Option<DistSpec>,
    /// The device reboots while downloading (and resumes afterwards).
    pub reboot_mid_download: Option<f64>,
    /// The image fails verification (hash or size mismatch).
    pub corrupt_image: Option<f64>,
    /// Power is lost while writing the image: the device reboots into the old slot.
    pub install_failure: Option<f64>,
    /// Each boot of the new image fails with this probability (and is retried).
    pub boot_failure: Option<f64>,
    /// The new image never boots on this device: boot loop, then rollback.
    pub boot_loop: Option<f64>,
    /// The health check fails during the trial: rollback.
    pub trial_failure: Option<f64>,
    /// The device never comes back after rebooting into the new image (bricked).
    pub never_returns: Option<f64>,
    /// The device's final status report is lost (it believes it reported).
    pub lost_report: Option<f64>,
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
    /// Overrides of the line's stage durations when this version is the one being installed.
    pub verify_s: Option<DistSpec>,
    pub install_s: Option<DistSpec>,
    pub trial_s: Option<DistSpec>,
    /// Overrides of the line's `[ota.faults]` when this version is the one being installed.
    #[serde(default)]
    pub faults: OtaFaultsRaw,
}

#[derive(Clone, Debug)]
pub struct FirmwareVersion {
    pub version: String,
    pub image_size_kb: u32,
    pub boot_s: Dist,
    /// How an update *to* this version goes.
    pub ota: OtaStages,
}

/// Stage durations and faults of an update to one version (line defaults merged with the
/// version's overrides).
#[derive(Clone, Debug)]
pub struct OtaStages {
    pub verify_s: Dist,
    pub install_s: Dist,
    pub trial_s: Dist,
    pub faults: OtaFaults,
}

/// Fault probabilities of an update, validated.
#[derive(Clone, Debug, Default)]
pub struct OtaFaults {
    pub download_stall: f64,
    pub stall_s: Option<Dist>,
    pub reboot_mid_download: f64,
    pub corrupt_image: f64,
    pub install_failure: f64,
    pub boot_failure: f64,
    pub boot_loop: f64,
    pub trial_failure: f64,
    pub never_returns: f64,
    pub lost_report: f64,
}

/// The line-wide settings of the update cycle.
#[derive(Clone, Debug)]
pub struct OtaCycle {
    pub max_boot_attempts: u8,
    pub download_attempts: u8,
    pub stall_timeout: crate::time::SimDuration,
}

#[derive(Clone, Debug)]
pub struct FirmwareModel {
    pub name: String,
    pub description: String,
    pub versions: Vec<FirmwareVersion>,
    pub cycle: OtaCycle,
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
        let line_faults = &self.ota.faults;
        check_faults(&mut c, "ota.faults", line_faults);
        let max_boot_attempts = self.ota.max_boot_attempts;
        c.check(
            (1..=16).contains(&max_boot_attempts),
            "ota.max_boot_attempts",
            max_boot_attempts,
            "must be between 1 and 16",
        );
        c.check(
            (1..=16).contains(&self.ota.download_attempts),
            "ota.download_attempts",
            self.ota.download_attempts,
            "must be between 1 and 16",
        );
        let stall_timeout =
            crate::profile::positive_duration(&mut c, "ota.stall_timeout", &self.ota.stall_timeout);
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
            check_faults(&mut c, &format!("{key}.faults"), &v.faults);
            let stage =
                |c: &mut Checker, name: &str, own: &Option<DistSpec>, line: &DistSpec| match own {
                    Some(d) => Dist::validate(d, &format!("{key}.{name}"), c),
                    None => Dist::validate(line, &format!("ota.{name}"), c),
                };
            let ota = OtaStages {
                verify_s: stage(&mut c, "verify_s", &v.verify_s, &self.ota.verify_s),
                install_s: stage(&mut c, "install_s", &v.install_s, &self.ota.install_s),
                trial_s: stage(&mut c, "trial_s", &v.trial_s, &self.ota.trial_s),
                faults: merge_faults(&mut c, &key, line_faults, &v.faults),
            };
            versions.push(FirmwareVersion {
                version: v.version.clone(),
                image_size_kb: v.image_size_kb,
                boot_s: Dist::validate(&v.boot_s, &format!("{key}.boot_s"), &mut c),
                ota,
            });
        }
        c.errors.into_result(FirmwareModel {
            name: self.name.clone(),
            description: self.description.clone(),
            versions,
            cycle: OtaCycle {
                max_boot_attempts,
                download_attempts: self.ota.download_attempts,
                stall_timeout,
            },
        })
    }
}

/// The fault probabilities of `f`, each checked to be in [0, 1].
fn probabilities(f: &OtaFaultsRaw) -> [(&'static str, Option<f64>); 9] {
    [
        ("download_stall", f.download_stall),
        ("reboot_mid_download", f.reboot_mid_download),
        ("corrupt_image", f.corrupt_image),
        ("install_failure", f.install_failure),
        ("boot_failure", f.boot_failure),
        ("boot_loop", f.boot_loop),
        ("trial_failure", f.trial_failure),
        ("never_returns", f.never_returns),
        ("lost_report", f.lost_report),
    ]
}

fn check_faults(c: &mut Checker, key: &str, f: &OtaFaultsRaw) {
    for (name, p) in probabilities(f) {
        if let Some(p) = p {
            c.check(
                (0.0..=1.0).contains(&p),
                &format!("{key}.{name}"),
                p,
                "must be a probability in [0, 1]",
            );
        }
    }
}

/// A version's faults: its own values where it has them, the line's otherwise.
fn merge_faults(c: &mut Checker, key: &str, line: &OtaFaultsRaw, own: &OtaFaultsRaw) -> OtaFaults {
    let pick = |a: Option<f64>, b: Option<f64>| a.or(b).unwrap_or(0.0).clamp(0.0, 1.0);
    let stall_s = match (&own.stall_s, &line.stall_s) {
        (Some(d), _) => Some(Dist::validate(d, &format!("{key}.faults.stall_s"), c)),
        (None, Some(d)) => Some(Dist::validate(d, "ota.faults.stall_s", c)),
        (None, None) => None,
    };
    OtaFaults {
        download_stall: pick(own.download_stall, line.download_stall),
        stall_s,
        reboot_mid_download: pick(own.reboot_mid_download, line.reboot_mid_download),
        corrupt_image: pick(own.corrupt_image, line.corrupt_image),
        install_failure: pick(own.install_failure, line.install_failure),
        boot_failure: pick(own.boot_failure, line.boot_failure),
        boot_loop: pick(own.boot_loop, line.boot_loop),
        trial_failure: pick(own.trial_failure, line.trial_failure),
        never_returns: pick(own.never_returns, line.never_returns),
        lost_report: pick(own.lost_report, line.lost_report),
    }
}
