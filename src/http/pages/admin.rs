//! `/admin`: the users, searched and paged, and what an administrator does to them.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{see_other, PageCtx, PageForm, Visit};
use crate::error::Error;
use crate::http::extract::{optional_whole_number, Client};
use crate::http::AppState;
use crate::store::{AdminChange, Role};

const PER_PAGE: i64 = 20;

struct UserRow {
    id: String,
    username: String,
    name: String,
    email: String,
    role: &'static str,
    active: bool,
    email_verified: bool,
    is_self: bool,
}

#[derive(Template)]
#[template(path = "pages/admin.html")]
struct AdminPage {
    page: PageCtx,
    users: Vec<UserRow>,
    q: String,
    page_no: i64,
    pages: i64,
    total: i64,
    notice: Option<&'static str>,
    prev_href: Option<String>,
    next_href: Option<String>,
    /// The newest audit entries (templates/pages/_audit.html).
    audit: Vec<super::mfa::EventRow>,
}

/// How many audit entries the administration page shows (the API pages through all).
const AUDIT_SHOWN: i64 = 50;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct AdminQuery {
    q: Option<String>,
    #[serde(deserialize_with = "optional_whole_number")]
    page: Option<i64>,
    notice: Option<String>,
}

fn notice(code: &str) -> Option<&'static str> {
    Some(match code {
        "deactivated" => "The account is deactivated and its sessions ended.",
        "activated" => "The account is active again.",
        "role" => "The role is changed; the account's sessions ended.",
        "signed-out" => "Every session of the account is signed out.",
        "unlocked" => "The account's sign-in failures are cleared.",
        _ => return None,
    })
}

fn list_href(q: &str, page: i64) -> String {
    let mut href = format!("/admin?page={page}");
    if !q.is_empty() {
        href.push_str("&q=");
        href.extend(form_urlencoded::byte_serialize(q.as_bytes()));
    }
    href
}

pub async fn page(
    State(state): State<AppState>,
    visit: Visit,
    Query(query): Query<AdminQuery>,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/admin");
    };
    let q = query.q.unwrap_or_default();
    let page_no = query.page.unwrap_or(1).max(1);
    let listed = state
        .auth
        .admin()
        .list_users(principal, Some(&q), page_no, PER_PAGE)
        .await;
    let (users, total) = match listed {
        Ok(listed) => listed,
        Err(e) => return visit.error(e),
    };
    let audit = match state
        .auth
        .audit()
        .list(principal, Default::default(), 1, AUDIT_SHOWN)
        .await
    {
        Ok(listed) => listed.events.into_iter().map(Into::into).collect(),
        Err(e) => return visit.error(e),
    };
    let pages = ((total + PER_PAGE - 1) / PER_PAGE).max(1);
    let page = AdminPage {
        page: visit.ctx(),
        users: users
            .into_iter()
            .map(|u| UserRow {
                is_self: u.db_id == principal.user.db_id,
                id: u.uid.to_string(),
                username: u.username,
                name: u.name,
                email: u.email,
                role: u.role.as_str(),
                active: u.active,
                email_verified: u.email_verified,
            })
            .collect(),
        prev_href: (page_no > 1).then(|| list_href(&q, page_no - 1)),
        next_href: (page_no < pages).then(|| list_href(&q, page_no + 1)),
        q,
        page_no,
        pages,
        total,
        notice: query.notice.as_deref().and_then(notice),
        audit,
    };
    visit.render(StatusCode::OK, &page)
}

/// `POST /admin/users/{id}/{deactivate|activate|role|signout-all|unlock}`.
pub async fn act(
    State(state): State<AppState>,
    visit: Visit,
    Path((id, action)): Path<(String, String)>,
    Client(client): Client,
    form: PageForm,
) -> Response {
    let Some(principal) = &visit.principal else {
        return Visit::sign_in_first("/admin");
    };
    let admin = state.auth.admin();
    let status = |active: bool| AdminChange {
        active: Some(active),
        ..AdminChange::default()
    };
    let done: Result<&str, Error> = match action.as_str() {
        "deactivate" => admin
            .update_user(principal, &id, status(false), &client)
            .await
            .map(|_| "deactivated"),
        "activate" => admin
            .update_user(principal, &id, status(true), &client)
            .await
            .map(|_| "activated"),
        "role" => {
            let role = match form.get("role") {
                "admin" => Role::Admin,
                "user" => Role::User,
                _ => {
                    return visit.error(Error::Validation(vec![crate::error::FieldError::new(
                        "role",
                        "Role must be \"user\" or \"admin\".",
                    )]))
                }
            };
            let change = AdminChange {
                role: Some(role),
                ..AdminChange::default()
            };
            admin
                .update_user(principal, &id, change, &client)
                .await
                .map(|_| "role")
        }
        "signout-all" => admin.logout_all(principal, &id).await.map(|_| "signed-out"),
        "unlock" => admin.unlock(principal, &id).await.map(|_| "unlocked"),
        _ => Err(Error::NotFound("action")),
    };
    match done {
        Ok(code) => {
            let page = form.get("page").parse::<i64>().unwrap_or(1).max(1);
            see_other(&format!("{}&notice={code}", list_href(form.get("q"), page)))
        }
        Err(e) => visit.error(e),
    }
}
