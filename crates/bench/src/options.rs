//! Values of the command line the subcommands share: lists of policies and rates,
//! and output folders.

use anyhow::{bail, Context, Result};
use reprise_router::PolicyKind;
use std::path::Path;
use std::str::FromStr;

/// Parse a comma-separated list of policies.
pub fn parse_policies(s: &str) -> Result<Vec<PolicyKind>> {
    s.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| PolicyKind::from_str(p).map_err(anyhow::Error::from))
        .collect::<Result<Vec<_>>>()
        .and_then(|v| {
            if v.is_empty() {
                bail!("no policy given")
            } else {
                Ok(v)
            }
        })
}

/// Parse a comma-separated list of positive request rates.
pub fn parse_rates(s: &str) -> Result<Vec<f64>> {
    let v = s
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|p| {
            p.trim()
                .parse::<f64>()
                .ok()
                .filter(|r| r.is_finite() && *r > 0.0)
                .ok_or_else(|| anyhow::anyhow!("request rate '{p}' is not a positive number"))
        })
        .collect::<Result<Vec<_>>>()?;
    if v.is_empty() {
        bail!("no request rate given");
    }
    Ok(v)
}

/// Create `dir` (and parents).
pub fn ensure_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))
}
