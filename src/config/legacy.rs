//! The old service's variable names, translated into ours: kept apart so that the names the
//! service documents stay in `config/mod.rs` and the compatibility shim stays here.

use crate::vars::{percent_encode, ConfigError, Vars};

/// `DATABASE_HOST_URL`, `DATABASE_SERVICE_PORT`, `DATABASE_NAME`, `DATABASE_USERNAME` and
/// `DATABASE_PASSWORD` as one PostgreSQL URL; `None` without `DATABASE_HOST_URL`.
pub(super) fn database_url(vars: &Vars<'_>) -> Result<Option<String>, ConfigError> {
    let Some(host) = vars.text("DATABASE_HOST_URL") else {
        return Ok(None);
    };
    let port: u16 = vars.parse("DATABASE_SERVICE_PORT", 5432)?;
    let name = vars
        .text("DATABASE_NAME")
        .unwrap_or_else(|| "postgres".to_owned());
    let user = vars
        .text("DATABASE_USERNAME")
        .unwrap_or_else(|| "postgres".to_owned());
    let credentials = match vars.text("DATABASE_PASSWORD") {
        Some(password) => format!("{}:{}", percent_encode(&user), percent_encode(&password)),
        None => percent_encode(&user),
    };
    Ok(Some(format!(
        "postgres://{credentials}@{host}:{port}/{}",
        percent_encode(&name)
    )))
}
