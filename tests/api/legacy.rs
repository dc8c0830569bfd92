//! Adopting the old Node.js service's PostgreSQL database.

use serde_json::json;
use sqlx::PgPool;

use crate::helpers::{fresh_pg_database, Backend, PgDatabase, TestApp};

const LEGACY_SCHEMA: &str = include_str!("../fixtures/legacy_schema.sql");

async fn legacy_database() -> Option<(PgDatabase, PgPool)> {
    let database = fresh_pg_database().await?;
    let pool = PgPool::connect(&database.url).await.unwrap();
    sqlx::raw_sql(LEGACY_SCHEMA).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO roles (name, description) VALUES ('user', 'old'), ('editor', 'old')")
        .execute(&pool)
        .await
        .unwrap();
    Some((database, pool))
}

async fn insert_legacy_user(pool: &PgPool, username: &str, email: &str, hash: &str) {
    sqlx::query(
        "INSERT INTO users (user_uid, full_name, email, password, username, role_id) \
         VALUES ($1, 'Legacy Person', $2, $3, $4, (SELECT role_id FROM roles WHERE name = 'user'))",
    )
    .bind(format!("uid-{username}"))
    .bind(email)
    .bind(hash)
    .bind(username)
    .execute(pool)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_database_is_adopted_and_bcrypt_users_sign_in_then_get_argon2id() {
    let Some((database, pool)) = legacy_database().await else {
        return;
    };
    let url = &database.url;
    // bcryptjs, which the old service used, writes $2a$ hashes at cost 10.
    let hash = bcrypt::hash("legacy-password-1", 10)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    insert_legacy_user(&pool, "olduser1", "Old.User@Example.com", &hash).await;

    let app = TestApp::spawn_on(Backend::Postgres, url, tempfile::tempdir().unwrap(), &[])
        .await
        .unwrap();
    let body = app.sign_in("olduser1", "legacy-password-1").await;
    assert_eq!(body["userId"], "uid-olduser1");
    assert_eq!(body["role"], "user");

    // The hash is upgraded in the background, right after the answer.
    let mut upgraded = String::new();
    for _ in 0..50 {
        upgraded = app.db.password_hash("olduser1").await;
        if upgraded.starts_with("$argon2id$") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    // The email kept its case in the old table, and still signs in.
    app.sign_in("old.user@example.com", "legacy-password-1")
        .await;
    let r = app
        .post(
            "/api/auth/signin",
            json!({"username": "olduser1", "password": "wrong"}),
        )
        .await;
    assert_eq!(r.status(), 401);

    // Starting again on the same database changes nothing.
    app.stop().await;
    let again = TestApp::spawn_on(Backend::Postgres, url, tempfile::tempdir().unwrap(), &[])
        .await
        .unwrap();
    again.sign_in("olduser1", "legacy-password-1").await;
    let roles: Vec<(String,)> = sqlx::query_as("SELECT name FROM roles ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    let roles: Vec<&str> = roles.iter().map(|(n,)| n.as_str()).collect();
    assert_eq!(roles, ["admin", "editor", "user"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_differing_only_in_case_stop_the_migration_with_their_names() {
    let Some((database, pool)) = legacy_database().await else {
        return;
    };
    let url = &database.url;
    let hash = bcrypt::hash("whatever-password", 4).unwrap();
    insert_legacy_user(&pool, "CaseClash", "one@example.com", &hash).await;
    insert_legacy_user(&pool, "caseclash", "two@example.com", &hash).await;
    let err = TestApp::spawn_on(Backend::Postgres, url, tempfile::tempdir().unwrap(), &[])
        .await
        .err()
        .expect("the migration must refuse to guess");
    let message = format!("{err:#}");
    assert!(message.contains("caseclash"), "{message}");
    // Nothing of ours was half-applied.
    let indexes: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE indexname = 'users_username_lower_key'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(indexes, 0);
}
