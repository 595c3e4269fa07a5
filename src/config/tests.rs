use super::*;

const MINIMAL: &str = r#"
[ksqldb]
url = "http://127.0.0.1:8088"
[lake]
url = "file:///var/lib/ksql-lake"
[[feeds]]
name = "transaction_stream"
kind = "stream"
source = "TRANSACTION_STREAM"
partitioning = "daily"          # or "hourly"
"#;

fn no_env() -> Vec<(String, String)> {
    Vec::new()
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(text, "test.toml", env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
}

#[test]
fn minimal_file_gets_every_default() {
    let config = Config::from_toml(MINIMAL, "test.toml", no_env()).unwrap();
    assert_eq!(config.ksqldb.client.url.as_str(), "http://127.0.0.1:8088/");
    assert_eq!(config.ksqldb.client.http2, Http2Mode::Auto);
    assert_eq!(config.memory_budget_bytes, 512 << 20);
    assert_eq!(config.shutdown_grace, Duration::from_secs(25));
    assert_eq!(config.http_listen.to_string(), "0.0.0.0:9464");
    let feed = &config.feeds[0];
    assert_eq!(feed.kind, FeedKind::Stream);
    assert!(feed.enabled);
    let s = &feed.settings;
    assert_eq!(s.partitioning, Partitioning::Daily);
    assert_eq!(s.event_time, EventTime::Rowtime);
    assert_eq!(s.timezone, chrono_tz::UTC);
    assert_eq!(s.compression, Compression::Zstd(3));
    assert_eq!(s.flush_max_bytes, 128 << 20);
    assert_eq!(s.flush_max_age, Duration::from_secs(300));
    assert_eq!(s.allowed_lateness, Duration::from_secs(600));
    assert_eq!(s.delivery, Delivery::ExactlyOnce);
}

#[test]
fn printed_default_config_parses_to_the_built_in_defaults() {
    let mut printed = Config::from_toml(DEFAULT_CONFIG, "default", no_env()).unwrap();
    // the printed [defaults] spell out the built-ins; as written they differ, as they should
    assert_eq!(printed.feed_defaults.snapshot_method.as_deref(), Some("auto"));
    printed.feed_defaults = Default::default();
    let minimal = Config::from_toml(
        "[ksqldb]\nurl = \"http://127.0.0.1:8088\"\n[lake]\nurl = \"file:///var/lib/ksql-lake\"\n",
        "minimal",
        no_env(),
    )
    .unwrap();
    assert_eq!(printed, minimal);
    // And every feed setting in [defaults] is spelled out in the printed file.
    let with_feed = format!("{DEFAULT_CONFIG}\n[[feeds]]\nname = \"a\"\nkind = \"stream\"\nsource = \"A\"\n");
    let feed_from_printed = Config::from_toml(&with_feed, "default", no_env()).unwrap().feeds[0].settings.clone();
    let feed_from_minimal = Config::from_toml(MINIMAL, "minimal", no_env()).unwrap().feeds[0].settings.clone();
    assert_eq!(feed_from_printed, feed_from_minimal);
}

#[test]
fn feed_settings_override_defaults_which_override_built_ins() {
    let text = format!(
        "{MINIMAL}\n[defaults]\npartitioning = \"hourly\"\ncompression = \"snappy\"\n\
         [[feeds]]\nname = \"b\"\nkind = \"table\"\nsource = \"B\"\ncompression = \"gzip\"\ncompression_level = 9\n\
         timestamp_column = \"EVENT_TS\"\ntimezone = \"Europe/Paris\"\nflush_max_bytes = \"1MiB\"\nenabled = false\n"
    );
    // MINIMAL's feed sets daily explicitly; [defaults] must not override it.
    let config = load(&text, &[]).unwrap();
    assert_eq!(config.feeds[0].settings.partitioning, Partitioning::Daily);
    assert_eq!(config.feeds[0].settings.compression, Compression::Snappy);
    let b = config.feed("b").unwrap();
    assert_eq!(b.kind, FeedKind::Table);
    assert!(!b.enabled);
    assert_eq!(b.settings.partitioning, Partitioning::Hourly);
    assert_eq!(b.settings.compression, Compression::Gzip(9));
    assert_eq!(b.settings.event_time, EventTime::Column("EVENT_TS".into()));
    assert_eq!(b.settings.timezone, chrono_tz::Europe::Paris);
    assert_eq!(b.settings.flush_max_bytes, 1 << 20);
}

#[test]
fn environment_overrides_any_key() {
    let config = load(
        MINIMAL,
        &[
            ("KSQL_LAKE_KSQLDB__URL", "https://ksql.example:8443"),
            ("KSQL_LAKE_KSQLDB__USERNAME", "key"),
            ("KSQL_LAKE_KSQLDB__PASSWORD", "secret"),
            ("KSQL_LAKE_MEMORY__BUDGET", "64MiB"),
            ("KSQL_LAKE_FEEDS__TRANSACTION_STREAM__PARTITIONING", "hourly"),
            ("KSQL_LAKE_DEFAULTS__FLUSH_MAX_ROWS", "1000"),
            ("KSQL_LAKE_CAPTURES", "/not/a/config/key"),
        ],
    )
    .unwrap();
    assert_eq!(config.ksqldb.client.url.as_str(), "https://ksql.example:8443/");
    assert_eq!(config.ksqldb.client.password.as_deref(), Some("secret"));
    assert_eq!(config.memory_budget_bytes, 64 << 20);
    assert_eq!(config.feeds[0].settings.partitioning, Partitioning::Hourly);
    assert_eq!(config.feeds[0].settings.flush_max_rows, 1000);
    let error = load(MINIMAL, &[("KSQL_LAKE_FEEDS__NOPE__PARTITIONING", "hourly")]).unwrap_err();
    assert!(error.to_string().contains("no feed named `nope`"), "{error}");
}

#[test]
fn invalid_values_name_the_key_and_what_is_allowed() {
    let cases = [
        ("partitioning = \"weekly\"", "feeds[0].partitioning", "allowed: daily, hourly"),
        ("compression = \"brotli\"", "feeds[0].compression", "allowed: zstd"),
        ("compression_level = 40", "feeds[0].compression_level", "zstd levels are 1 to 22"),
        ("flush_max_bytes = \"12XB\"", "feeds[0].flush_max_bytes", "unknown unit"),
        ("flush_max_age = \"soon\"", "feeds[0].flush_max_age", "invalid duration"),
        ("flush_max_rows = 0", "feeds[0].flush_max_rows", "greater than zero"),
        ("timezone = \"Mars/Olympus\"", "feeds[0].timezone", "IANA time zone"),
        ("delivery = \"maybe-once\"", "feeds[0].delivery", "allowed: exactly-once"),
    ];
    let base = MINIMAL.replace("partitioning = \"daily\"          # or \"hourly\"\n", "");
    for (line, key, allowed) in cases {
        let text = format!("{base}{line}\n");
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(message.contains(key) && message.contains(allowed), "{line}: {message}");
    }
    let unknown = load(&format!("{MINIMAL}flush_max_rowz = 5\n"), &[]).unwrap_err().to_string();
    assert!(unknown.contains("unknown field `flush_max_rowz`"), "{unknown}");
    let unknown_section =
        load("[ksqldb]\nurl = \"http://a\"\nuser = \"x\"\n[lake]\nurl = \"/tmp\"\n", &[]).unwrap_err().to_string();
    assert!(unknown_section.contains("unknown field `user`"), "{unknown_section}");
    let twice = format!("{MINIMAL}[[feeds]]\nname = \"transaction_stream\"\nkind = \"stream\"\nsource = \"X\"\n");
    assert!(load(&twice, &[]).unwrap_err().to_string().contains("defined twice"));
    // One feed-name rule, the lake's, at load time: nothing the lake would refuse later passes.
    for name in ["_x".to_string(), "a..b".to_string(), "x".repeat(300)] {
        let text = MINIMAL.replace("name = \"transaction_stream\"", &format!("name = \"{name}\""));
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("feeds[0].name"), "{name}: {message}");
    }
    let bad_scheme = MINIMAL.replace("file:///var/lib/ksql-lake", "ftp://x/y");
    assert!(load(&bad_scheme, &[]).unwrap_err().to_string().contains("lake.url"));
    let bad_listen = format!("{MINIMAL}[http]\nlisten = \"everywhere\"\n");
    assert!(load(&bad_listen, &[]).unwrap_err().to_string().contains("http.listen"));
    assert!(load("[ksqldb]\nurl = \"http://a\"\n", &[]).unwrap_err().to_string().contains("lake"));
}

#[test]
fn secrets_never_appear_in_config_errors() {
    let secret = "hunter2-S3CRET";
    // A password in the URL is refused, and the message does not repeat it.
    let in_url = MINIMAL.replace("http://127.0.0.1:8088", &format!("http://admin:{secret}@127.0.0.1:8088"));
    let message = load(&in_url, &[]).unwrap_err().to_string();
    assert!(message.contains("ksqldb.url") && message.contains("ksqldb.password"), "{message}");
    assert!(!message.contains(secret), "{message}");
    // An unparsable URL with a password is shown without it.
    let broken = MINIMAL.replace("http://127.0.0.1:8088", &format!("http://admin:{secret}@[::1"));
    let message = load(&broken, &[]).unwrap_err().to_string();
    assert!(!message.contains(secret), "{message}");
    // Credentials in the lake URL are refused.
    let lake = MINIMAL.replace("file:///var/lib/ksql-lake", &format!("s3://AKIA:{secret}@bucket/x"));
    let message = load(&lake, &[]).unwrap_err().to_string();
    assert!(message.contains("lake.url") && !message.contains(secret), "{message}");
    // A TOML syntax error on the password line says where, not what the line holds.
    let syntax = MINIMAL.replace("[lake]", &format!("username = \"admin\"\npassword = \"{secret}\n[lake]"));
    let message = load(&syntax, &[]).unwrap_err().to_string();
    assert!(message.contains("line 5") && !message.contains(secret), "{message}");
    // A secret of the wrong type is not echoed either.
    let typed = MINIMAL.replace("[lake]", "username = \"admin\"\npassword = 987654321\n[lake]");
    let message = load(&typed, &[]).unwrap_err().to_string();
    assert!(!message.contains("987654321"), "{message}");
}

#[test]
fn a_source_must_be_an_identifier_and_the_grace_period_positive() {
    for source in ["NOTES WHERE ROWOFFSET < 3", "A;DROP", "1ABC", "`a`b`", ""] {
        let text = MINIMAL.replace("source = \"TRANSACTION_STREAM\"", &format!("source = \"{source}\""));
        let message = load(&text, &[]).unwrap_err().to_string();
        assert!(message.contains("feeds[0].source"), "{source}: {message}");
    }
    for source in ["ORDERS", "orders_v2", "_X", "`my-stream`", "`a``b`"] {
        let text = MINIMAL.replace("source = \"TRANSACTION_STREAM\"", &format!("source = \"{source}\""));
        assert!(load(&text, &[]).is_ok(), "{source}");
    }
    let message = load(&format!("{MINIMAL}[shutdown]\ngrace_period = \"0s\"\n"), &[]).unwrap_err().to_string();
    assert!(message.contains("shutdown.grace_period"), "{message}");
}

#[test]
fn a_value_of_the_wrong_type_names_its_key() {
    let message = load(&format!("{MINIMAL}batch_rows = -1\n"), &[]).unwrap_err().to_string();
    assert!(message.contains("feeds[0].batch_rows") || message.contains("feeds.0.batch_rows"), "{message}");
    let message = load(&MINIMAL.replace("[lake]", "idle_timeout = 5\n[lake]"), &[]).unwrap_err().to_string();
    assert!(message.contains("ksqldb.idle_timeout"), "{message}");
}

#[test]
fn a_numeric_password_from_the_environment_stays_text_and_debug_output_hides_secrets() {
    let text = MINIMAL.replace("[lake]", "username = \"admin\"\n[lake]");
    let config = load(&text, &[("KSQL_LAKE_KSQLDB__PASSWORD", "123456")]).unwrap();
    assert_eq!(config.ksqldb.client.password.as_deref(), Some("123456"));
    let debug = format!("{config:?}");
    assert!(!debug.contains("123456"), "{debug}");
}

#[test]
fn a_table_with_changelog_runs_with_its_changelog_feed() {
    let feed =
        |extra: &str| format!("{MINIMAL}\n[[feeds]]\nname = \"users\"\nkind = \"table\"\nsource = \"USERS\"\n{extra}");
    let config = load(&feed("changelog = true\ndelivery = \"at-least-once\"\n"), &[]).unwrap();
    let table = config.feed("users").unwrap();
    let runs: Vec<FeedConfig> = table.with_changelog().collect();
    assert_eq!(runs.len(), 2);
    assert_eq!((runs[1].name.as_str(), runs[1].kind), ("users.changelog", FeedKind::Changelog));
    assert_eq!(runs[1].settings.delivery, Delivery::ExactlyOnce, "a changelog is always exactly once");
    assert_eq!(runs[1].changelog_feed(), None);
    assert_eq!(load(&feed(""), &[]).unwrap().feed("users").unwrap().with_changelog().count(), 1);
    // streams are their own changelog; a changelog needs the whole table and a name with room
    let stream = MINIMAL.replace("[[feeds]]\n", "[[feeds]]\nchangelog = true\n");
    assert!(load(&stream, &[]).unwrap_err().to_string().contains("changelog"));
    let long = format!(
        "{MINIMAL}\n[[feeds]]\nname = \"{}\"\nkind = \"table\"\nsource = \"U\"\nchangelog = true\n",
        "t".repeat(120)
    );
    assert!(load(&long, &[]).unwrap_err().to_string().contains("at most 118"));
    let with_query = load(&feed("changelog = true\nquery = \"SELECT * FROM USERS EMIT CHANGES;\"\n"), &[]);
    assert!(with_query.unwrap_err().to_string().contains("cannot be combined with `query`"));
    // a feed of its own cannot take a changelog's name, in any case
    let taken = MINIMAL.replace("name = \"transaction_stream\"", "name = \"users.Changelog\"");
    assert!(load(&taken, &[]).unwrap_err().to_string().contains("changelog feeds of tables"));
    // the changelog goes by arrival time for its deletes, and ignores the table's snapshot settings
    let fixed =
        load(&feed("changelog = true\ninvalid_event_time = \"fixed-partition\"\nretention_versions = 3\n"), &[]);
    let fixed = fixed.unwrap().feed("users").unwrap().changelog_feed().unwrap();
    assert_eq!(fixed.settings.invalid_event_time, crate::lake::InvalidEventTime::ArrivalTime);
    let other = load(&feed("changelog = true\nretention_versions = 9\nsnapshot_interval = \"5m\"\n"), &[]);
    assert_eq!(other.unwrap().feed("users").unwrap().changelog_feed().unwrap(), fixed);
    // [defaults] changelog = true applies to tables only
    let defaults = format!(
        "{MINIMAL}\n[defaults]\nchangelog = true\n[[feeds]]\nname = \"users\"\nkind = \"table\"\nsource = \"U\"\n"
    );
    let defaults = load(&defaults, &[]).unwrap();
    assert_eq!(defaults.feed("transaction_stream").unwrap().with_changelog().count(), 1);
    assert_eq!(defaults.feed("users").unwrap().with_changelog().count(), 2);
}
