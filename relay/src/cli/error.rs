//! A failed command, and the exit code it ends with: 1 runtime failure, 2 usage or
//! configuration error, 3 denied.

use std::process::ExitCode;

use crate::control::ControlError;
use crate::control::registry::RegistryError;

/// A failed command and its exit code.
#[derive(Debug)]
pub enum CliError {
    Usage(String),
    Denied(String),
    Failure(String),
}

impl CliError {
    pub fn exit_code(&self) -> ExitCode {
        ExitCode::from(match self {
            CliError::Failure(_) => 1,
            CliError::Usage(_) => 2,
            CliError::Denied(_) => 3,
        })
    }

    pub fn message(&self) -> &str {
        match self {
            CliError::Usage(m) | CliError::Denied(m) | CliError::Failure(m) => m,
        }
    }
}

impl From<RegistryError> for CliError {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Invalid(_) | RegistryError::NotFound(_) => {
                CliError::Usage(e.to_string())
            }
            _ => CliError::Failure(e.to_string()),
        }
    }
}

impl From<ControlError> for CliError {
    fn from(e: ControlError) -> Self {
        match e {
            ControlError::Denied(d) => CliError::Denied(format!("denied ({}): {d}", d.code())),
            ControlError::Registry(r) => r.into(),
        }
    }
}

pub type CliResult = Result<(), CliError>;
