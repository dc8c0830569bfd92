//! The audit log (SPEC §13): what is recorded beside a change, and reading it back — one's own
//! security events, and every entry for administrators.

use super::*;
use crate::store::{AuditEvent, AuditFilter, NewAuditEvent, NewEmail};

/// One page of entries with the count of all that match.
#[derive(Debug)]
pub struct AuditPage {
    pub events: Vec<AuditEvent>,
    pub total: i64,
}

impl Auth {
    /// Appends an entry (and queues its notice) for a change already made. A failure to
    /// record is logged, not answered: the change itself has happened.
    pub(crate) async fn record(&self, event: &NewAuditEvent, notice: Option<&NewEmail>) {
        match self.store.record_audit(event, notice).await {
            Ok(()) => {
                if notice.is_some() {
                    self.mail_wake.notify_one();
                }
            }
            Err(e) => {
                tracing::error!(error = %e, kind = event.kind, "could not write an audit entry")
            }
        }
    }

    /// The particulars a notice names: when, from which address, with which device.
    pub(crate) fn facts(&self, client: &ClientInfo) -> Vec<String> {
        let mut facts = vec![format!("Time: {} (UTC)", time::rfc3339(self.clock.now()))];
        if let Some(ip) = client.ip {
            facts.push(format!("IP address: {ip}"));
        }
        if let Some(ua) = &client.user_agent {
            facts.push(format!(
                "Device: {}",
                ua.chars().take(160).collect::<String>()
            ));
        }
        facts
    }
}

/// Pages are 1-based; at most 100 entries each.
fn bounds(page: i64, per_page: i64) -> Result<(i64, i64), Error> {
    let mut errors = ValidationErrors::default();
    if page < 1 {
        errors.push("page", "Page must be 1 or more.");
    }
    if !(1..=100).contains(&per_page) {
        errors.push("per_page", "per_page must be between 1 and 100.");
    }
    errors.into_result()?;
    Ok((page.saturating_sub(1).saturating_mul(per_page), per_page))
}

impl Audit<'_> {
    /// The caller's own security events (entries about their account), newest first.
    pub async fn own_events(
        &self,
        caller: &Principal,
        page: i64,
        per_page: i64,
    ) -> Result<AuditPage, Error> {
        if !caller.has_scope(Scope::ProfileRead) {
            return Err(Error::Forbidden(
                "This API key does not have the scope for this.",
            ));
        }
        let (offset, limit) = bounds(page, per_page)?;
        let filter = AuditFilter {
            user: Some(caller.user.uid.clone()),
            ..AuditFilter::default()
        };
        let (events, total) = self.store.list_audit(&filter, offset, limit).await?;
        Ok(AuditPage { events, total })
    }

    /// Every entry, filtered (administrators; keys need `users:read`). `filter.user` matches
    /// the actor or the target.
    pub async fn list(
        &self,
        caller: &Principal,
        mut filter: AuditFilter,
        page: i64,
        per_page: i64,
    ) -> Result<AuditPage, Error> {
        self.require_admin(caller, Scope::UsersRead)?;
        let (offset, limit) = bounds(page, per_page)?;
        filter.or_actor = true;
        if let Some(kind) = &filter.kind {
            if kind.is_empty() || kind.chars().count() > 64 {
                return Err(Error::Validation(vec![crate::error::FieldError::new(
                    "kind",
                    "kind must be 1–64 characters.",
                )]));
            }
        }
        // No kind or user id holds NUL (PostgreSQL text cannot), and ids are at most 100
        // characters: such a filter matches nothing.
        let impossible = filter.kind.as_ref().is_some_and(|k| k.contains('\0'))
            || filter
                .user
                .as_ref()
                .is_some_and(|u| u.as_str().contains('\0') || u.as_str().chars().count() > 100);
        if impossible {
            return Ok(AuditPage {
                events: Vec::new(),
                total: 0,
            });
        }
        let (events, total) = self.store.list_audit(&filter, offset, limit).await?;
        Ok(AuditPage { events, total })
    }
}
