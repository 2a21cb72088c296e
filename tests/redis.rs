//! The shared Redis client against the real Redis on 127.0.0.1:6379
//! (`REDIS_URL` picks another), and against a port where nothing listens.

use std::time::Duration;

use send_worker::config::Settings;
use send_worker::redis::Redis;
use send_worker::secret::Secret;
use send_worker::testkit::redis_url;

fn settings(url: &str) -> Settings {
    let mut s = Settings::load_with_env(None, Vec::<(String, String)>::new()).expect("defaults");
    s.redis.url = Secret::new(url);
    s
}

#[tokio::test]
async fn no_url_means_no_redis() {
    let s = settings("");
    assert!(Redis::from_settings(&s.redis).unwrap().is_none());
}

#[tokio::test]
async fn the_client_reaches_redis_and_prefixes_its_keys() {
    let s = settings(&redis_url());
    let r = Redis::from_settings(&s.redis).unwrap().expect("a client");
    r.ping()
        .await
        .expect("Redis must be running on 127.0.0.1:6379");
    let key = r.key("test", &uuid::Uuid::new_v4().simple().to_string());
    assert!(key.starts_with("send-worker:test:"), "{key}");
    let mut c = r.conn();
    let _: () = redis::cmd("SET")
        .arg(&key)
        .arg("v")
        .arg("PX")
        .arg(5_000)
        .query_async(&mut c)
        .await
        .unwrap();
    let v: String = redis::cmd("GET")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(v, "v");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut c)
        .await
        .unwrap();
}

#[tokio::test]
async fn an_unreachable_redis_fails_instead_of_hanging_and_the_password_never_prints() {
    let port = send_worker::testkit::free_port();
    let s = settings(&format!("redis://:hunter2@127.0.0.1:{port}/0"));
    let r = Redis::from_settings(&s.redis).unwrap().expect("a client");
    assert!(!format!("{r:?}").contains("hunter2"));
    assert!(!format!("{:?}", s.redis).contains("hunter2"));
    let result = tokio::time::timeout(Duration::from_secs(10), r.ping())
        .await
        .expect("a ping to a closed port must not hang");
    assert!(result.is_err());
}

#[test]
fn a_bad_url_is_a_configuration_error_that_names_the_key() {
    let err = Settings::load_with_env(
        None,
        vec![(
            "SEND_WORKER__REDIS__URL".to_owned(),
            "http://nope".to_owned(),
        )],
    )
    .unwrap_err();
    assert!(err.to_string().contains("redis.url"), "{err}");
}

/// A TLS URL (`rediss://`, as managed Redis services give) is accepted, and
/// a TLS handshake against a plain-text server is an error, not a hang or a
/// panic (the TLS stack is built in: rustls with the system's roots).
#[tokio::test]
async fn a_rediss_url_is_accepted_and_a_failed_handshake_is_an_error() {
    let s = settings("rediss://:hunter2@127.0.0.1:6379/0");
    let r = Redis::from_settings(&s.redis).unwrap().expect("a client");
    let result = tokio::time::timeout(Duration::from_secs(10), r.ping())
        .await
        .expect("a TLS ping to a plain-text server must not hang");
    let err = result.expect_err("a plain-text server cannot complete a TLS handshake");
    assert!(!err.to_string().contains("hunter2"), "{err}");
}
