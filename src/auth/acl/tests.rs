use super::*;

fn rule(who: Who, access: &str, topic: &str) -> RuleSpec {
    RuleSpec {
        who,
        topic: topic.into(),
        access: access.into(),
    }
}

fn user(name: &str) -> Who {
    Who::User(name.into())
}

fn acl(default_allow: bool, rules: Vec<RuleSpec>) -> Acl {
    Acl::new(&AclConfig {
        rules,
        default_allow,
        ..AclConfig::default()
    })
    .expect("valid rules")
}

fn alice(acl: &Acl) -> ClientAcl {
    acl.for_client(Identity::User("alice"), "alice-1")
        .expect("rules exist")
}

#[test]
fn no_rules_and_allow_means_no_checker() {
    let open = acl(true, vec![]);
    assert!(open.is_open());
    assert!(open.for_client(Identity::Anonymous, "c").is_none());
    let closed = acl(false, vec![]);
    let mut c = closed
        .for_client(Identity::Anonymous, "c")
        .expect("checker");
    assert!(!c.may_publish("a"));
    assert!(!c.may_receive("a"));
    assert_eq!(c.subscribe("#"), Coverage::Denied);
}

#[test]
fn deny_wins_over_any_grant() {
    let acl = acl(
        false,
        vec![
            rule(user("alice"), "readwrite", "#"),
            rule(Who::Everyone, "deny", "secret/#"),
        ],
    );
    let mut c = alice(&acl);
    assert!(c.may_publish("public/x"));
    assert!(!c.may_publish("secret/x"));
    assert!(!c.may_publish("secret"));
    assert!(c.may_receive("public/x"));
    assert!(!c.may_receive("secret/deep/x"));
    assert_eq!(c.subscribe("public/#"), Coverage::Whole);
    assert_eq!(c.subscribe("#"), Coverage::Partial);
    assert_eq!(c.subscribe("secret/+"), Coverage::Denied);
    assert_eq!(c.subscribe("+/x"), Coverage::Partial);
    assert!(c.checks_deliveries(), "partly readable filters are checked");
}

#[test]
fn default_decides_what_no_rule_matches() {
    let allow = acl(true, vec![rule(Who::Everyone, "deny", "private/#")]);
    let mut c = allow.for_client(Identity::Anonymous, "x").expect("rules");
    assert!(c.may_publish("any/thing"));
    assert!(!c.may_publish("private/a"));
    assert_eq!(c.subscribe("any/#"), Coverage::Whole);
    assert_eq!(c.subscribe("#"), Coverage::Partial);
    let deny = acl(false, vec![rule(Who::Everyone, "read", "news/#")]);
    let mut c = deny.for_client(Identity::Anonymous, "x").expect("rules");
    assert!(!c.may_publish("news/a"), "read does not grant write");
    assert!(c.may_receive("news/a"));
    assert!(!c.may_receive("other"));
    assert_eq!(c.subscribe("news/+"), Coverage::Whole);
    assert_eq!(c.subscribe("#"), Coverage::Partial);
    assert_eq!(c.subscribe("other/#"), Coverage::Denied);
}

#[test]
fn rules_apply_by_user_client_id_and_anonymity() {
    let acl = acl(
        false,
        vec![
            rule(user("alice"), "readwrite", "a/#"),
            rule(Who::ClientId("dev-7".into()), "write", "d/7"),
            rule(Who::Anonymous, "read", "open/#"),
            rule(Who::Everyone, "read", "all"),
        ],
    );
    let mut a = alice(&acl);
    assert!(a.may_publish("a/x") && a.may_receive("all"));
    assert!(!a.may_receive("open/x"), "anonymous rules are not alice's");
    let mut bob = acl
        .for_client(Identity::User("bob"), "dev-7")
        .expect("rules");
    assert!(!bob.may_publish("a/x"));
    assert!(bob.may_publish("d/7"), "client id rules apply to any user");
    let mut anon = acl.for_client(Identity::Anonymous, "x").expect("rules");
    assert!(anon.may_receive("open/1") && anon.may_receive("all"));
    let mut key = acl.for_client(Identity::ApiKey, "x").expect("rules");
    assert!(
        !key.may_receive("open/1"),
        "an API key client is not anonymous"
    );
    assert!(key.may_receive("all"));
}

#[test]
fn placeholders_substitute_whole_levels() {
    let acl = acl(
        false,
        vec![
            rule(Who::Everyone, "readwrite", "users/%u/#"),
            rule(Who::Everyone, "write", "devices/%c/state"),
        ],
    );
    let mut a = alice(&acl);
    assert!(a.may_publish("users/alice/x"));
    assert!(!a.may_publish("users/bob/x"));
    assert!(a.may_publish("devices/alice-1/state"));
    assert!(!a.may_publish("devices/other/state"));
    assert_eq!(a.subscribe("users/alice/#"), Coverage::Whole);
    assert_eq!(a.subscribe("users/+/#"), Coverage::Partial);
    assert_eq!(a.subscribe("users/bob/#"), Coverage::Denied);
    // No username: rules naming %u do not apply.
    let mut anon = acl.for_client(Identity::Anonymous, "c").expect("rules");
    assert!(!anon.may_publish("users/%u/x"));
    assert!(anon.may_publish("devices/c/state"));
}

#[test]
fn wildcards_in_values_never_widen() {
    let acl = acl(
        false,
        vec![
            rule(Who::Everyone, "readwrite", "users/%u/#"),
            rule(Who::Everyone, "read", "public/#"),
            rule(Who::Everyone, "deny", "public/%c/private"),
        ],
    );
    // A username of `+` or `#` grants nothing beyond a level literally named so.
    for name in ["+", "#", "a/b"] {
        let mut c = acl.for_client(Identity::User(name), "ok").expect("rules");
        assert!(!c.may_publish("users/bob/x"), "{name}");
        assert!(!c.may_publish("users/a/b/x"), "{name}");
        assert_eq!(c.subscribe("users/#"), Coverage::Denied, "{name}");
        assert!(c.may_receive("public/x"), "other grants still hold");
    }
    // A client id that would widen a deny makes it deny everything.
    let mut c = acl.for_client(Identity::User("bob"), "#").expect("rules");
    assert!(!c.may_receive("public/x"));
    assert!(!c.may_publish("users/bob/x"));
    assert_eq!(c.subscribe("public/#"), Coverage::Denied);
}

#[test]
fn dollar_topics_need_rules_of_their_own() {
    let acl = acl(
        false,
        vec![
            rule(Who::Everyone, "readwrite", "#"),
            rule(user("alice"), "read", "$SYS/#"),
        ],
    );
    let mut anon = acl.for_client(Identity::Anonymous, "c").expect("rules");
    assert!(anon.may_receive("a/b"));
    assert!(!anon.may_receive("$SYS/uptime"));
    assert!(!anon.may_publish("$SYS/uptime"));
    assert_eq!(anon.subscribe("$SYS/#"), Coverage::Denied);
    assert_eq!(anon.subscribe("#"), Coverage::Whole, "# reaches no $ topic");
    let mut a = alice(&acl);
    assert_eq!(a.subscribe("$SYS/#"), Coverage::Whole);
    assert!(a.may_receive("$SYS/uptime"));
}

#[test]
fn subscribe_access_is_for_filters_within_it() {
    let acl = acl(false, vec![rule(user("alice"), "subscribe", "sensors/#")]);
    let mut a = alice(&acl);
    assert_eq!(a.subscribe("sensors/+/temp"), Coverage::Whole);
    assert_eq!(a.subscribe("#"), Coverage::Denied, "wider than the pattern");
    assert!(!a.may_publish("sensors/x"));
    assert!(a.may_receive("sensors/x"));
}

#[test]
fn shared_subscriptions_are_judged_by_their_filter() {
    let acl = acl(true, vec![rule(Who::Everyone, "deny", "secret/#")]);
    let mut a = alice(&acl);
    assert_eq!(a.subscribe("$share/g/secret/#"), Coverage::Denied);
    assert_eq!(a.subscribe("$share/g/#"), Coverage::Partial);
    a.settle(std::iter::empty());
    assert!(a.checks_deliveries());
    a.unsubscribe("$share/g/#");
    assert!(!a.checks_deliveries());
}

#[test]
fn settling_checks_until_the_session_is_classified() {
    let acl = acl(true, vec![rule(Who::Everyone, "deny", "secret/#")]);
    let mut a = alice(&acl);
    assert!(a.checks_deliveries(), "nothing known yet: check everything");
    a.settle(["public/#"].into_iter());
    assert!(!a.checks_deliveries());
    a.settle(["#"].into_iter());
    assert!(a.checks_deliveries());
    // A resumed subscription that is now denied stays, but delivers nothing.
    let mut b = alice(&acl);
    b.settle(["secret/#"].into_iter());
    assert!(b.checks_deliveries());
    assert!(!b.may_receive("secret/x"));
}

#[test]
fn cache_answers_agree_with_the_rules() {
    let acl = acl(
        false,
        vec![
            rule(Who::Everyone, "read", "t/#"),
            rule(Who::Everyone, "deny", "t/+/no"),
        ],
    );
    let mut c = acl.for_client(Identity::Anonymous, "c").expect("rules");
    let long = format!("t/{}", "x".repeat(CACHE_TOPIC_BYTES_MAX));
    for _ in 0..3 {
        for i in 0..(CACHE_SLOTS * 3) {
            assert!(c.may_receive(&format!("t/{i}/yes")));
            assert!(!c.may_receive(&format!("t/{i}/no")));
            assert!(!c.may_publish(&format!("t/{i}/yes")));
        }
        assert!(c.may_receive(&long));
    }
}

#[test]
fn invalid_rules_name_the_field() {
    let bad = |spec: RuleSpec| {
        Acl::new(&AclConfig {
            rules: vec![rule(Who::Everyone, "read", "ok"), spec],
            ..AclConfig::default()
        })
        .expect_err("invalid")
    };
    let e = bad(rule(Who::Everyone, "reed", "a"));
    assert_eq!((e.index, e.field), (1, "access"));
    assert!(e.to_string().contains("reed"), "{e}");
    let e = bad(rule(Who::Everyone, "read", "a/#/b"));
    assert_eq!((e.index, e.field), (1, "topic"));
    let e = bad(rule(Who::Everyone, "read", "a/x%u"));
    assert_eq!(e.field, "topic");
    let e = bad(rule(Who::Everyone, "read", ""));
    assert_eq!(e.field, "topic");
    let e = bad(rule(user(""), "read", "a"));
    assert_eq!(e.field, "username");
    let e = bad(rule(Who::ClientId(String::new()), "read", "a"));
    assert_eq!(e.field, "client_id");
}

#[test]
fn client_ids_belong_to_their_users() {
    let owned = |owner| {
        Acl::new(&AclConfig {
            client_id_owner: owner,
            client_id_separator: "-".into(),
            usernames: vec!["alice".into(), "alice-bob".into(), "carol".into()],
            default_allow: true,
            ..AclConfig::default()
        })
        .expect("valid")
    };
    let any = owned(ClientIdOwner::Any);
    assert!(any.may_use_client_id(Identity::User("carol"), "alice"));
    let equal = owned(ClientIdOwner::Username);
    assert!(equal.may_use_client_id(Identity::User("alice"), "alice"));
    assert!(!equal.may_use_client_id(Identity::User("carol"), "alice"));
    assert!(!equal.may_use_client_id(Identity::Anonymous, "alice"));
    assert!(!equal.may_use_client_id(Identity::ApiKey, "carol"));
    assert!(equal.may_use_client_id(Identity::User("carol"), "alice-2"));
    assert!(equal.may_use_client_id(Identity::Anonymous, "someone"));
    let prefix = owned(ClientIdOwner::UsernamePrefix);
    assert!(prefix.may_use_client_id(Identity::User("alice"), "alice"));
    assert!(prefix.may_use_client_id(Identity::User("alice"), "alice-phone"));
    assert!(!prefix.may_use_client_id(Identity::User("carol"), "alice-phone"));
    // The longest configured prefix owns the id.
    assert!(!prefix.may_use_client_id(Identity::User("alice"), "alice-bob-1"));
    assert!(prefix.may_use_client_id(Identity::User("alice-bob"), "alice-bob-1"));
    assert!(prefix.may_use_client_id(Identity::User("alice"), "alice-bobby"));
    assert!(!prefix.may_use_client_id(Identity::Anonymous, "carol-x"));
    assert!(prefix.may_use_client_id(Identity::Anonymous, "carolx"));
    let no_separator = Acl::new(&AclConfig {
        client_id_owner: ClientIdOwner::UsernamePrefix,
        ..AclConfig::default()
    });
    assert_eq!(
        no_separator.map(|_| ()).unwrap_err().field,
        "client_id_separator"
    );
}

#[test]
fn mosquitto_file_imports() {
    let text = "\
# anonymous clients
topic read $SYS/#
topic public/#

user roger
topic foo/bar
topic deny foo/bar/secret
topic write a topic with spaces

# every client
pattern write $SYS/broker/connection/%c/state
pattern read users/%u/#
";
    let rules = import_mosquitto(text).expect("valid file");
    assert_eq!(
        rules,
        vec![
            rule(Who::Anonymous, "read", "$SYS/#"),
            rule(Who::Anonymous, "readwrite", "public/#"),
            rule(user("roger"), "readwrite", "foo/bar"),
            rule(user("roger"), "deny", "foo/bar/secret"),
            rule(user("roger"), "write", "a topic with spaces"),
            rule(Who::Everyone, "write", "$SYS/broker/connection/%c/state"),
            rule(Who::Everyone, "read", "users/%u/#"),
        ]
    );
    let acl = acl(false, rules);
    let mut roger = acl
        .for_client(Identity::User("roger"), "r1")
        .expect("rules");
    assert!(roger.may_publish("foo/bar"));
    assert!(roger.may_publish("$SYS/broker/connection/r1/state"));
    assert!(roger.may_receive("users/roger/inbox"));
    assert!(
        !roger.may_receive("public/x"),
        "anonymous lines are not roger's"
    );
    let mut anon = acl.for_client(Identity::Anonymous, "a").expect("rules");
    assert!(anon.may_receive("$SYS/x") && !anon.may_publish("$SYS/x"));
    assert!(anon.may_publish("public/x"));
}

#[test]
fn mosquitto_file_errors_name_the_line() {
    let e = import_mosquitto("topic a\nfrobnicate b\n").expect_err("bad keyword");
    assert_eq!(e.line, 2);
    assert!(e.to_string().contains("frobnicate"), "{e}");
    assert_eq!(import_mosquitto("user\n").expect_err("no name").line, 1);
    assert_eq!(
        import_mosquitto("\n\ntopic\n").expect_err("no topic").line,
        3
    );
    let e = import_mosquitto("user a\ntopic read a/#/b\n").expect_err("bad topic");
    assert_eq!(e.line, 2);
}

#[test]
fn connections_share_rules_without_placeholders() {
    let acl = acl(
        false,
        vec![
            rule(Who::Everyone, "read", "news/#"),
            rule(Who::Everyone, "readwrite", "users/%u/#"),
            rule(user("alice"), "write", "alerts/+"),
        ],
    );
    let (mut a, mut b) = (alice(&acl), alice(&acl));
    assert_eq!(
        Arc::strong_count(&acl.everyone),
        3,
        "both connections hold the rules for every client, not copies"
    );
    assert_eq!(Arc::strong_count(&acl.users["alice"]), 3);
    for c in [&mut a, &mut b] {
        assert!(c.may_receive("news/x"));
        assert!(
            c.may_publish("users/alice/x"),
            "placeholders are still filled"
        );
        assert!(!c.may_publish("users/bob/x"));
        assert!(c.may_publish("alerts/fire"));
        assert_eq!(c.subscribe("users/alice/#"), Coverage::Whole);
    }
}

#[test]
fn a_deny_that_does_not_apply_leaves_the_client_unchecked() {
    // An anonymous client has no username: the deny drops out, nothing can refuse it.
    let acl = acl(true, vec![rule(Who::Everyone, "deny", "users/%u/#")]);
    let anon = acl.for_client(Identity::Anonymous, "x").expect("rules");
    assert!(!anon.checks_deliveries());
    let named = acl.for_client(Identity::User("bob"), "y").expect("rules");
    assert!(named.checks_deliveries(), "bob's deny applies");
}
