//! Access tokens wrong in every way are refused with 401 and a distinct code. Tokens with
//! chosen times are forged with the server's own signing key, taken from the stopped server's
//! store and vault.

use base64::Engine;
use pasetors::claims::Claims;
use pasetors::footer::Footer;
use pasetors::keys::{AsymmetricKeyPair, AsymmetricSecretKey, Generate, SymmetricKey};
use pasetors::paserk::Id as Pid;
use pasetors::version4::V4;
use serde_json::json;

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::support::{TestServer, config_for, expect_problem};

fn forge(secret: &AsymmetricSecretKey<V4>, pid: &Pid, claims: &Claims) -> String {
    let mut footer = Footer::new();
    footer.key_id(pid);
    pasetors::public::sign(secret, claims, Some(&footer), None).unwrap()
}

fn claims(org: &str, user: &str, sid: &str) -> Claims {
    let mut c = Claims::new().unwrap();
    c.subject(user).unwrap();
    c.add_additional("org", org).unwrap();
    c.add_additional("role", "member").unwrap();
    c.add_additional("sid", sid).unwrap();
    c
}

#[tokio::test]
async fn every_bad_token_has_its_own_code() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start_with(config_for(dir.path())).await;
    let (org_id, sl) = create_org(&s).await;
    operator_invite_and_accept(&s, &org_id, "tess@example.org", "member").await;
    operator_invite_and_accept(&s, &org_id, "adam@example.org", "admin").await;
    let t = login(&s, &sl, "tess").await;
    let admin = login(&s, &sl, "adam").await;
    s.stop().await;

    // The server's signing key, as an attacker who stole the data dir and its key would have it.
    let (secret, pid) = {
        let (store, _) = outpost::store::Store::open(dir.path(), &mut |_| {}).unwrap();
        let vault = outpost::vault::Vault::open_or_create(&dir.path().join("master.key")).unwrap();
        let rec = outpost::auth::keys::list(&store).unwrap().pop().unwrap();
        let sealed = base64::engine::general_purpose::STANDARD.decode(&rec.sealed_secret).unwrap();
        let text = vault.open(&format!("signing_key:{}", rec.id), &sealed).unwrap();
        let secret = AsymmetricSecretKey::<V4>::try_from(std::str::from_utf8(&text).unwrap()).unwrap();
        let public = pasetors::keys::AsymmetricPublicKey::<V4>::try_from(rec.public.as_str()).unwrap();
        (secret, Pid::from(&public))
    };
    let s = TestServer::start_with(config_for(dir.path())).await;
    let me = |token: String| {
        let s = &s;
        async move { s.http.get(s.url("/v1/me")).bearer_auth(token).send().await.unwrap() }
    };

    // The genuine token works, and so does one forged with the real key and fresh times.
    assert_eq!(me(t.access.clone()).await.status(), 200);
    let good = claims(&org_id, &t.user_id, &t.session_id);
    assert_eq!(me(forge(&secret, &pid, &good)).await.status(), 200);

    // Expired.
    let mut c = claims(&org_id, &t.user_id, &t.session_id);
    c.issued_at("2020-01-01T00:00:00+00:00").unwrap();
    c.not_before("2020-01-01T00:00:00+00:00").unwrap();
    c.expiration("2020-01-01T00:15:00+00:00").unwrap();
    expect_problem(me(forge(&secret, &pid, &c)).await, 401, "token_expired").await;
    // Not yet valid.
    let mut c = claims(&org_id, &t.user_id, &t.session_id);
    c.not_before("2999-01-01T00:00:00+00:00").unwrap();
    c.expiration("2999-01-01T00:15:00+00:00").unwrap();
    expect_problem(me(forge(&secret, &pid, &c)).await, 401, "token_not_yet_valid").await;
    // Signed by a key this server does not have.
    let other = AsymmetricKeyPair::<V4>::generate().unwrap();
    expect_problem(me(forge(&other.secret, &Pid::from(&other.public), &good)).await, 401, "token_unknown_key").await;
    // Claiming the real key id, signed by another key.
    expect_problem(me(forge(&other.secret, &pid, &good)).await, 401, "token_invalid_signature").await;
    // Tampered: one character of the payload changed.
    let mut bytes = t.access.clone().into_bytes();
    let i = "v4.public.".len() + 5;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    expect_problem(me(String::from_utf8(bytes).unwrap()).await, 401, "token_invalid_signature").await;
    // A v4.local token.
    let local = pasetors::local::encrypt(&SymmetricKey::<V4>::generate().unwrap(), &good, None, None).unwrap();
    expect_problem(me(local).await, 401, "token_wrong_purpose").await;
    // Garbage.
    expect_problem(me("not-a-token".into()).await, 401, "token_malformed").await;
    expect_problem(me("v4.public.%%%".into()).await, 401, "token_malformed").await;
    // A revoked session.
    let r = s
        .http
        .delete(s.url(&format!("/v1/auth/sessions/{}", t.session_id)))
        .bearer_auth(&t.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    expect_problem(me(t.access.clone()).await, 401, "session_revoked").await;
    // A suspended user, even with a fresh session.
    let t2 = login(&s, &sl, "tess").await;
    let r = s
        .http
        .post(s.url(&format!("/v1/users/{}/suspend", t2.user_id)))
        .bearer_auth(&admin.access)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    expect_problem(me(t2.access.clone()).await, 401, "session_revoked").await;
    let r = s
        .http
        .post(s.url("/v1/auth/login"))
        .json(&json!({ "org": sl, "login": "tess", "password": crate::identity::PASSWORD }))
        .send()
        .await
        .unwrap();
    expect_problem(r, 401, "invalid_login").await;
    // A suspended organization: every token of it stops working at once.
    assert_eq!(me(admin.access.clone()).await.status(), 200);
    let r = s.post(&format!("/v1/orgs/{org_id}/suspend"), &json!({})).send().await.unwrap();
    assert_eq!(r.status(), 200);
    expect_problem(me(admin.access.clone()).await, 401, "org_inactive").await;
    s.stop().await;
}
