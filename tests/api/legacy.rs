//! Adopting the old Node.js service's PostgreSQL database.

use sqlx::PgPool;

use crate::helpers::{
    eventually, fresh_pg_database, Backend, PgDatabase, TestApp, TestAppBuilder, WAIT,
};
use crate::postgres_only;

postgres_only!(
    an_old_database_is_adopted_and_bcrypt_users_sign_in_then_get_argon2id,
    users_differing_only_in_case_stop_the_migration_with_their_names,
);

const LEGACY_SCHEMA: &str = include_str!("../fixtures/legacy_schema.sql");

async fn legacy_database() -> (PgDatabase, PgPool) {
    let database = fresh_pg_database().await;
    let pool = PgPool::connect(&database.url).await.unwrap();
    sqlx::raw_sql(LEGACY_SCHEMA).execute(&pool).await.unwrap();
    sqlx::query("INSERT INTO roles (name, description) VALUES ('user', 'old'), ('editor', 'old')")
        .execute(&pool)
        .await
        .unwrap();
    (database, pool)
}

/// Our server, started on the old service's database.
fn on_legacy(url: &str) -> TestAppBuilder {
    TestApp::builder(Backend::Postgres).database_url(url)
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

async fn an_old_database_is_adopted_and_bcrypt_users_sign_in_then_get_argon2id() {
    let (database, pool) = legacy_database().await;
    let url = &database.url;
    // bcryptjs, which the old service used, writes $2a$ hashes at cost 10.
    let hash = bcrypt::hash("legacy-password-1", 10)
        .unwrap()
        .replacen("$2b$", "$2a$", 1);
    insert_legacy_user(&pool, "olduser1", "Old.User@Example.com", &hash).await;

    let app = on_legacy(url).spawn().await;
    let tokens = app.sign_in_as("olduser1", "legacy-password-1").await;
    assert_eq!(tokens.user_id, "uid-olduser1");
    assert_eq!(tokens.role, "user");

    // The hash is upgraded in the background, right after the answer.
    let upgraded = eventually("the hash to be upgraded", WAIT, || async {
        let hash = app.db.password_hash("olduser1").await;
        hash.starts_with("$argon2id$").then_some(hash)
    })
    .await;
    assert!(
        upgraded.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{upgraded}"
    );
    // The email kept its case in the old table, and still signs in.
    app.sign_in_as("old.user@example.com", "legacy-password-1")
        .await;
    assert_eq!(app.try_sign_in("olduser1", "wrong").await.status(), 401);

    // Starting again on the same database changes nothing.
    app.stop().await;
    let again = on_legacy(url).spawn().await;
    again.sign_in_as("olduser1", "legacy-password-1").await;
    let roles: Vec<(String,)> = sqlx::query_as("SELECT name FROM roles ORDER BY name")
        .fetch_all(&pool)
        .await
        .unwrap();
    let roles: Vec<&str> = roles.iter().map(|(n,)| n.as_str()).collect();
    assert_eq!(roles, ["admin", "editor", "user"]);
}

async fn users_differing_only_in_case_stop_the_migration_with_their_names() {
    let (database, pool) = legacy_database().await;
    let url = &database.url;
    let hash = bcrypt::hash("whatever-password", 4).unwrap();
    insert_legacy_user(&pool, "CaseClash", "one@example.com", &hash).await;
    insert_legacy_user(&pool, "caseclash", "two@example.com", &hash).await;
    let err = on_legacy(url)
        .try_spawn()
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
