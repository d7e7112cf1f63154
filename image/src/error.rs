//! Errors that stop the relay before Postfix starts. Each names the input (variable, file or
//! field) and says what to do, because the person reading it is configuring a container.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{field}: {problem}")]
    Invalid { field: String, problem: String },
    #[error("{field}: cannot read {path}: {source}")]
    Unreadable {
        field: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl ConfigError {
    pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError::Invalid {
            field: field.into(),
            problem: problem.into(),
        }
    }

    pub fn unreadable(
        field: impl Into<String>,
        path: impl Into<PathBuf>,
        source: io::Error,
    ) -> Self {
        ConfigError::Unreadable {
            field: field.into(),
            path: path.into(),
            source,
        }
    }
}

/// Failures while preparing or running Postfix.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{action}: {source}")]
    Io {
        action: String,
        #[source]
        source: io::Error,
    },
    #[error("{command} failed: {detail}")]
    Command { command: String, detail: String },
}

impl RunError {
    pub fn io(action: impl Into<String>) -> impl FnOnce(io::Error) -> RunError {
        let action = action.into();
        move |source| RunError::Io { action, source }
    }
}

pub type ConfigResult<T> = Result<T, ConfigError>;
