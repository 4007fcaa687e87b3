use super::*;

const DAY: Duration = Duration::from_secs(86_400);

fn auth_with(
    users: &[(&str, &str, Role)],
    key: &[u8],
    ttl: Duration,
    life: Duration,
) -> Authenticator {
    let users = users
        .iter()
        .map(|(u, p, r)| (u.to_string(), (hash_password(p).unwrap(), *r)))
        .collect();
    Authenticator::new(users, Signer::new(key), ttl, life).unwrap()
}

fn auth(users: &[(&str, &str)]) -> Authenticator {
    let users: Vec<(&str, &str, Role)> =
        users.iter().map(|(u, p)| (*u, *p, Role::Writer)).collect();
    auth_with(&users, b"k", Duration::from_secs(60), DAY)
}

fn headers(v: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_str(v).unwrap());
    h
}

#[tokio::test]
async fn basic_with_and_without_padding() {
    let a = auth(&[("alice", "s3cret!")]);
    let padded = STANDARD.encode("alice:s3cret!");
    let unpadded = STANDARD_NO_PAD.encode("alice:s3cret!");
    assert_ne!(padded, unpadded);
    for enc in [padded, unpadded] {
        let p = a
            .authenticate(&headers(&format!("Basic {enc}")), None)
            .await
            .unwrap();
        assert_eq!(p.user, "alice");
        assert_eq!(p.role, Role::Writer);
    }
    for wrong in ["alice:nope", "mallory:s3cret!"] {
        let e = a
            .authenticate(&headers(&format!("Basic {}", STANDARD.encode(wrong))), None)
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        // Unknown user and wrong password read the same.
        assert_eq!(e.message(), "invalid user or password");
    }
    assert!(a.authenticate(&HeaderMap::new(), None).await.is_err());
}

#[tokio::test]
async fn tokens_round_trip_across_nodes_and_expire() {
    let a = auth(&[("alice", "pw")]);
    let mut p = a
        .authenticate(
            &headers(&format!("Basic {}", STANDARD.encode("alice:pw"))),
            None,
        )
        .await
        .unwrap();
    p.hive = "sales".into();
    let token = a.mint(&p);
    // Another node with the same key and the same user list accepts it.
    let b = Authenticator {
        signer: Signer::new(b"k"),
        ..a.clone()
    };
    let got = b
        .authenticate(&headers(&format!("Bearer {token}")), None)
        .await
        .unwrap();
    assert_eq!((got.hive.as_str(), got.role), ("sales", Role::Writer));
    // A different key does not.
    let c = Authenticator {
        signer: Signer::new(b"other"),
        ..a.clone()
    };
    assert!(
        c.authenticate(&headers(&format!("Bearer {token}")), None)
            .await
            .is_err()
    );
    // Tampering breaks the MAC.
    assert!(
        a.authenticate(&headers(&format!("Bearer x{token}")), None)
            .await
            .is_err()
    );
    // Expired.
    let short = Authenticator {
        token_ttl: Duration::ZERO,
        ..a.clone()
    };
    let t = short.mint(&p);
    std::thread::sleep(Duration::from_millis(1100));
    let e = short
        .authenticate(&headers(&format!("Bearer {t}")), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("expired"));
}

#[tokio::test]
async fn sliding_stops_at_the_absolute_lifetime() {
    // Three seconds of lifetime: room for a loaded machine between the login and the renewal.
    let lifetime = Duration::from_secs(3);
    let login = std::time::Instant::now();
    let a = auth_with(&[("alice", "pw", Role::Writer)], b"k", DAY, lifetime);
    let p = a
        .authenticate(
            &headers(&format!("Basic {}", STANDARD.encode("alice:pw"))),
            None,
        )
        .await
        .unwrap();
    let token = a.mint(&p);
    // Re-minting from the token (what every response does) keeps the login time.
    let again = a
        .authenticate(&headers(&format!("Bearer {token}")), None)
        .await
        .unwrap();
    let renewed = a.mint(&again);
    // Login times are whole seconds: past the lifetime by more than one second, whatever the
    // fraction the login happened at.
    std::thread::sleep((lifetime + Duration::from_millis(1100)).saturating_sub(login.elapsed()));
    let e = a
        .authenticate(&headers(&format!("Bearer {renewed}")), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("expired"), "{e:?}");
}

#[tokio::test]
async fn tokens_of_nodes_without_users_and_of_old_passwords_are_refused() {
    // A node without users mints a token for any claimed name, with the same key.
    let open = auth_with(&[], b"k", DAY, DAY);
    let p = open
        .authenticate(
            &headers(&format!("Basic {}", STANDARD.encode("alice:whatever"))),
            None,
        )
        .await
        .unwrap();
    let forged = open.mint(&p);
    let guarded = auth(&[("alice", "pw")]);
    let e = guarded
        .authenticate(&headers(&format!("Bearer {forged}")), None)
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unauthenticated);
    // A password change ends the sessions of the old one.
    let p = guarded
        .authenticate(
            &headers(&format!("Basic {}", STANDARD.encode("alice:pw"))),
            None,
        )
        .await
        .unwrap();
    let old = guarded.mint(&p);
    let changed = auth(&[("alice", "new password")]);
    let e = changed
        .authenticate(&headers(&format!("Bearer {old}")), None)
        .await
        .unwrap_err();
    assert!(e.message().contains("credentials changed"), "{e:?}");
}

#[tokio::test]
async fn roles_come_from_the_user_list() {
    let a = auth_with(
        &[("r", "pw", Role::Reader), ("boss", "pw", Role::Admin)],
        b"k",
        DAY,
        DAY,
    );
    for (u, role) in [("r", Role::Reader), ("boss", Role::Admin)] {
        let p = a
            .authenticate(
                &headers(&format!("Basic {}", STANDARD.encode(format!("{u}:pw")))),
                None,
            )
            .await
            .unwrap();
        assert_eq!(p.role, role);
        let t = a.mint(&p);
        let again = a
            .authenticate(&headers(&format!("Bearer {t}")), None)
            .await
            .unwrap();
        assert_eq!(again.role, role);
    }
}
