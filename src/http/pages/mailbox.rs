//! `/dev/mailbox` (development only): the emails of the development mailbox, newest first,
//! their links clickable, so nobody copies a quoted-printable link out of an `.eml` file.

use std::path::Path;

use askama::Template;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use mailparse::{MailHeaderMap, ParsedMail};

use super::{PageCtx, Visit};
use crate::http::AppState;

/// The newest this many are shown.
const SHOWN: usize = 50;

struct Mail {
    subject: String,
    to: String,
    date: String,
    /// The text part, escaped, its links made `<a>` elements.
    body_html: String,
    links: usize,
}

#[derive(Template)]
#[template(path = "pages/mailbox.html")]
struct MailboxPage {
    page: PageCtx,
    dir: String,
    smtp: bool,
    mails: Vec<Mail>,
}

pub async fn page(State(state): State<AppState>, visit: Visit) -> Response {
    let dir = state.config.mail.mailbox_dir.clone();
    let smtp = state.config.mail.smtp_url.is_some();
    let read = tokio::task::spawn_blocking(move || read_mailbox(&dir)).await;
    let mails = read.unwrap_or_default();
    let page = MailboxPage {
        page: visit.ctx(),
        dir: state.config.mail.mailbox_dir.display().to_string(),
        smtp,
        mails,
    };
    visit.render(StatusCode::OK, &page)
}

fn read_mailbox(dir: &Path) -> Vec<Mail> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<_> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension().is_some_and(|x| x == "eml")
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    // Names start with the time they were written: the newest sort last.
    files.sort();
    files.reverse();
    files
        .into_iter()
        .take(SHOWN)
        .filter_map(|path| std::fs::read(&path).ok())
        .filter_map(|raw| mailparse::parse_mail(&raw).ok().map(|m| to_mail(&m)))
        .collect()
}

fn to_mail(mail: &ParsedMail<'_>) -> Mail {
    let header = |name: &str| mail.headers.get_first_value(name).unwrap_or_default();
    let text = text_part(mail).unwrap_or_default().replace("\r\n", "\n");
    let (body_html, links) = linkify(&text);
    Mail {
        subject: header("Subject"),
        to: header("To"),
        date: header("Date"),
        body_html,
        links,
    }
}

fn text_part(mail: &ParsedMail<'_>) -> Option<String> {
    if mail.subparts.is_empty() {
        return (mail.ctype.mimetype == "text/plain")
            .then(|| mail.get_body().ok())
            .flatten();
    }
    mail.subparts.iter().find_map(text_part)
}

/// Escapes `text` and makes each `http(s)://…` in it a link; also counts them.
fn linkify(text: &str) -> (String, usize) {
    let mut out = String::with_capacity(text.len() + 64);
    let mut links = 0;
    let mut rest = text;
    while let Some(at) = ["https://", "http://"]
        .iter()
        .filter_map(|scheme| rest.find(scheme))
        .min()
    {
        out.push_str(&crate::http::escape_html(&rest[..at]));
        let url_len = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"'))
            .unwrap_or(rest.len() - at);
        let url = &rest[at..at + url_len];
        out.push_str("<a href=\"");
        out.push_str(&crate::http::escape_html(url));
        out.push_str("\">");
        out.push_str(&crate::http::escape_html(url));
        out.push_str("</a>");
        links += 1;
        rest = &rest[at + url_len..];
    }
    out.push_str(&crate::http::escape_html(rest));
    (out, links)
}

#[cfg(test)]
mod tests {
    use super::linkify;

    #[test]
    fn links_become_anchors_and_the_rest_is_escaped() {
        let (html, n) = linkify("Open <b> http://x.test/a?token=1&b=2\nor https://y.test.");
        assert_eq!(n, 2);
        assert!(html.starts_with("Open &lt;b&gt; <a href=\"http://x.test/a?token=1&amp;b=2\">"));
        assert!(html.contains("<a href=\"https://y.test.\">"));
    }
}
