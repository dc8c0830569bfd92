//! `cargo run --example self_signed_cert -- DIR`: writes `DIR/cert.pem` and `DIR/key.pem`, a
//! self-signed certificate for `localhost` and 127.0.0.1, for trying HTTPS locally and for
//! `bench/run.sh` on a machine without openssl. Development only (rcgen is a dev-dependency).
#![allow(clippy::unwrap_used, clippy::expect_used)]

fn main() {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| ".".into()));
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let certified = rcgen::generate_simple_self_signed(names).expect("a certificate");
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("cert.pem written");
    std::fs::write(dir.join("key.pem"), certified.key_pair.serialize_pem())
        .expect("key.pem written");
    eprintln!("wrote {0}/cert.pem and {0}/key.pem", dir.display());
}
