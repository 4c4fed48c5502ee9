//! `betcycle self-update [--check]`: replace this binary with the newest GitHub release
//! (the `self_update` crate). The release's `SHA256SUMS` asset must list the downloaded
//! archive with a matching digest, and the new binary must answer `--version`, before it
//! replaces this one. A binary that something else manages — Nix, a package manager, a
//! container image — is never replaced: the command says what to do instead.
//!
//! Builds without the `self-update` cargo feature (the Nix package) keep the verb, which
//! then only explains that this build is updated by whoever built it.

use super::Failure;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

/// Where releases are published.
pub const REPOSITORY: &str = "betcycle/betcycle";

#[derive(Debug, clap::Args)]
pub struct SelfUpdate {
    /// Only report whether a newer release exists; change nothing.
    #[arg(long)]
    check: bool,
    /// The GitHub API to ask (GitHub Enterprise or a mirror of the releases).
    #[arg(long, value_name = "URL", default_value = "https://api.github.com")]
    api_url: String,
    /// The repository whose releases to follow, as OWNER/NAME.
    #[arg(long, value_name = "OWNER/NAME", default_value = REPOSITORY)]
    repository: String,
}

impl SelfUpdate {
    pub fn run(self, env: BTreeMap<String, String>) -> Result<ExitCode, Failure> {
        let exe = std::env::current_exe()
            .and_then(|p| p.canonicalize())
            .map_err(|e| Failure::Runtime(format!("cannot locate this binary: {e}")))?;
        if let Some(why) = managed_by(&exe, &env, |p| p.exists()) {
            return Err(Failure::Runtime(format!(
                "not updating {}: {why}",
                exe.display()
            )));
        }
        self.update(&exe)
    }

    #[cfg(not(feature = "self-update"))]
    fn update(self, _exe: &Path) -> Result<ExitCode, Failure> {
        Err(Failure::Runtime(
            "this build of BetCycle was made without self-update (the Nix package and \
             distribution packages are updated by their package manager)"
                .into(),
        ))
    }

    #[cfg(feature = "self-update")]
    fn update(self, exe: &Path) -> Result<ExitCode, Failure> {
        let current = crate::VERSION;
        let updater = self.updater(exe)?;
        if self.check {
            let newer = updater.is_update_available().map_err(|e| {
                Failure::Runtime(format!(
                    "cannot check for releases: {}",
                    crate::core::outbound::describe(&e)
                ))
            })?;
            match newer {
                Some(release) => println!(
                    "betcycle {} is available (this is {current}); run `betcycle self-update` to install it",
                    release.version()
                ),
                None => println!("betcycle {current} is the newest release"),
            }
            return Ok(ExitCode::SUCCESS);
        }
        let status = updater.update().map_err(|e| {
            Failure::Runtime(format!(
                "update failed, nothing replaced: {}",
                crate::core::outbound::describe(&e)
            ))
        })?;
        if status.is_updated() {
            println!(
                "updated {} from {current} to {}; restart BetCycle to run it (e.g. systemctl restart betcycle)",
                exe.display(),
                status.version(),
            );
        } else {
            println!("betcycle {current} is the newest release");
        }
        Ok(ExitCode::SUCCESS)
    }

    #[cfg(feature = "self-update")]
    fn updater(&self, exe: &Path) -> Result<self_update::backends::github::Update, Failure> {
        let (owner, name) = self.repository.split_once('/').ok_or_else(|| {
            Failure::Usage(format!(
                "--repository {:?} is not OWNER/NAME",
                self.repository
            ))
        })?;
        let mut builder = self_update::backends::github::Update::configure();
        builder
            .repo_owner(owner)
            .repo_name(name)
            .api_base_url(self.api_url.trim_end_matches('/'))
            .bin_name("betcycle")
            .target(release_target())
            .current_version(crate::VERSION)
            .bin_install_path(exe)
            .checksum_from_asset("SHA256SUMS")
            .verify_binary(|new| {
                let out = std::process::Command::new(new)
                    .arg("--version")
                    .output()
                    .map_err(|e| {
                        self_update::errors::Error::verification_rejected(e.to_string())
                    })?;
                let says = String::from_utf8_lossy(&out.stdout);
                if out.status.success() && says.starts_with("betcycle ") {
                    Ok(())
                } else {
                    Err(self_update::errors::Error::verification_rejected(format!(
                        "the new binary does not answer `--version` as betcycle: {:?}",
                        says.trim()
                    )))
                }
            })
            .no_confirm(true)
            .show_download_progress(false)
            .show_output(false);
        for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
            builder.add_root_certificate(self_update::Certificate::from_der(der.to_vec()));
        }
        builder
            .build()
            .map_err(|e| Failure::Usage(format!("cannot set up the update: {e}")))
    }
}

/// The release asset this machine takes: the static musl build for its architecture.
#[cfg(feature = "self-update")]
fn release_target() -> String {
    format!("{}-unknown-linux-musl", std::env::consts::ARCH)
}

/// Why this binary must not replace itself, if something else manages it.
/// `BETCYCLE_MANAGED_BY` names the manager outright (the container image and the Helm chart
/// set it); `self` is the owner's word that a copy inside a container is theirs to update.
pub fn managed_by(
    exe: &Path,
    env: &BTreeMap<String, String>,
    exists: impl Fn(&Path) -> bool,
) -> Option<String> {
    let declared = env
        .get("BETCYCLE_MANAGED_BY")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty());
    if let Some(manager) = declared.filter(|m| *m != "self") {
        return Some(format!(
            "BETCYCLE_MANAGED_BY says {manager} manages this binary; update it through {manager}"
        ));
    }
    if exe.starts_with("/nix/store") {
        return Some(
            "it lives in the Nix store; update the flake input and rebuild \
             (`nix flake update` then `nixos-rebuild switch`)"
                .into(),
        );
    }
    let packaged = [
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/lib",
        "/usr/libexec",
    ];
    if packaged.iter().any(|dir| exe.starts_with(dir)) {
        return Some(
            "it was installed by the system's package manager; update it with that \
             (apt, dnf, pacman, …), or install BetCycle under /usr/local/bin to self-update"
                .into(),
        );
    }
    let in_container = declared.is_none() && exists(Path::new("/.dockerenv"))
        || exists(Path::new("/run/.containerenv"))
        || env.contains_key("KUBERNETES_SERVICE_HOST");
    if in_container {
        return Some(
            "it runs in a container, whose image is what gets updated: pull the new image and \
             recreate the container (set BETCYCLE_MANAGED_BY=self if you manage this binary yourself)"
                .into(),
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::managed_by;
    use std::collections::BTreeMap;
    use std::path::Path;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn binaries_something_else_manages_are_left_alone() {
        let none = |_: &Path| false;
        let nix = Path::new("/nix/store/abc-betcycle-0.1.0/bin/betcycle");
        assert!(
            managed_by(nix, &env(&[]), none)
                .unwrap()
                .contains("Nix store")
        );
        let apt = Path::new("/usr/bin/betcycle");
        assert!(
            managed_by(apt, &env(&[]), none)
                .unwrap()
                .contains("package manager")
        );
        let local = Path::new("/usr/local/bin/betcycle");
        assert_eq!(managed_by(local, &env(&[]), none), None);
        let docker = |p: &Path| p == Path::new("/.dockerenv");
        assert!(
            managed_by(local, &env(&[]), docker)
                .unwrap()
                .contains("container")
        );
        let k8s = env(&[("KUBERNETES_SERVICE_HOST", "10.0.0.1")]);
        assert!(managed_by(local, &k8s, none).unwrap().contains("container"));
        let declared = env(&[("BETCYCLE_MANAGED_BY", "the Helm chart")]);
        assert!(
            managed_by(local, &declared, none)
                .unwrap()
                .contains("the Helm chart manages")
        );
        // `self` is the owner's word that nothing else manages this copy.
        let own = env(&[("BETCYCLE_MANAGED_BY", "self")]);
        assert_eq!(managed_by(local, &own, docker), None);
    }
}
