//! Why `reprise route` could not start or stopped.

use reprise_api::fetch::LoadError;
use reprise_api::options::ConfigError;

/// Why `reprise route` could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// A bad option.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The text side of the model could not be loaded.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Listening or serving failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// Anything else, said in one line.
    #[error("{0}")]
    Other(String),
}
