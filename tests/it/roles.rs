//! The role matrix, generated from the API document: for every operation a user calls and
//! every organization role, the operation is allowed exactly when the policy grants the
//! permission its description names (`Permission: \`…\``) — and, for operations that also
//! name a room role (`Room role: \`…\``), when the caller holds it in the room — and refused
//! with 403 otherwise.

use outpost::domain::policy::{self, Permission, Role, RoomRole};
use serde_json::Value;

use crate::identity::{create_org, login, operator_invite_and_accept};
use crate::isolation::sample;
use crate::support::{TestServer, config_for, slug};

fn permission_of(op: &Value) -> Permission {
    let text = op["description"].as_str().unwrap_or_default();
    let name = text.split("Permission: `").nth(1).and_then(|t| t.split('`').next());
    let id = op["operationId"].as_str().unwrap();
    name.and_then(Permission::parse).unwrap_or_else(|| panic!("{id} does not name its permission"))
}

fn needs_channel_membership(op: &Value) -> bool {
    op["description"].as_str().unwrap_or_default().contains("Channel role: `member`")
}

fn room_role_of(op: &Value) -> Option<RoomRole> {
    let text = op["description"].as_str().unwrap_or_default();
    let name = text.split("Room role: `").nth(1).and_then(|t| t.split('`').next())?;
    RoomRole::ALL.into_iter().find(|r| r.as_str() == name)
}

#[tokio::test]
async fn every_role_gets_exactly_what_the_policy_grants() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.limits.login_per_addr_per_min = 100_000;
    config.limits.user_requests_per_s = 100_000;
    config.auth.sessions_per_user_max = 100_000;
    let s = TestServer::start_with(config).await;
    let (org_id, sl) = create_org(&s).await;
    for role in Role::ALL {
        operator_invite_and_accept(&s, &org_id, &format!("{}@example.org", role.as_str()), role.as_str()).await;
    }
    let doc: Value = s.http.get(s.url("/v1/openapi.json")).send().await.unwrap().json().await.unwrap();
    let owner = login(&s, &sl, "owner").await;
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if !op["security"].to_string().contains("UserAuth") {
                continue;
            }
            let permission = permission_of(op);
            let room_role = room_role_of(op);
            let channel_member_needed = needs_channel_membership(op);
            let body = op["requestBody"]["content"]["application/json"]["schema"].clone();
            for role in Role::ALL {
                // A fresh session and a fresh target each time: some operations end sessions
                // or change their target.
                let me = login(&s, &sl, role.as_str()).await;
                let target = s
                    .post(
                        &format!("/v1/orgs/{org_id}/invitations"),
                        &serde_json::json!({ "email": format!("{}@example.org", slug("t")), "role": "guest" }),
                    )
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap();
                // A fresh room: the caller's own when they may make one (they host it), else one
                // of the owner's that everyone may see (where the caller takes no part).
                let (maker, my_room_role) = if policy::allows(role, Permission::RoomsCreate) {
                    (&me.access, Some(RoomRole::Host))
                } else {
                    (&owner.access, None)
                };
                let made: Value =
                    crate::support::post_json(&s, maker, "/v1/rooms", serde_json::json!({ "name": "fresh" })).await;
                let room_id = made["id"].as_str().unwrap().to_owned();
                // Likewise a fresh public channel with one message by its maker.
                let chan_maker =
                    if policy::allows(role, Permission::ChannelsCreate) { &me.access } else { &owner.access };
                let chan: Value = crate::support::post_json(
                    &s,
                    chan_maker,
                    "/v1/channels",
                    serde_json::json!({ "kind": "public", "name": "fresh" }),
                )
                .await;
                let channel_id = chan["id"].as_str().unwrap().to_owned();
                let msg: Value = crate::support::post_json(
                    &s,
                    chan_maker,
                    &format!("/v1/channels/{channel_id}/messages"),
                    serde_json::json!({ "text": "hello" }),
                )
                .await;
                let message_id = msg["id"].as_str().unwrap().to_owned();
                let channel_member = policy::allows(role, Permission::ChannelsCreate);
                // And two fresh tasks (by the caller when they may write tasks, else the owner).
                let task_maker = if policy::allows(role, Permission::TasksWrite) { &me.access } else { &owner.access };
                let mut task_ids = Vec::new();
                for _ in 0..2 {
                    let t: Value =
                        crate::support::post_json(&s, task_maker, "/v1/tasks", serde_json::json!({ "title": "t" }))
                            .await;
                    task_ids.push(t["id"].as_str().unwrap().to_owned());
                }
                let comment: Value = crate::support::post_json(
                    &s,
                    task_maker,
                    &format!("/v1/tasks/{}/comments", task_ids[0]),
                    serde_json::json!({ "text": "noted" }),
                )
                .await;
                let comment_id = comment["id"].as_str().unwrap().to_owned();
                // A document in the fresh room, with one saved version, by the room's maker.
                let d: Value = crate::support::post_json(
                    &s,
                    maker,
                    &format!("/v1/rooms/{room_id}/docs"),
                    serde_json::json!({ "name": "fresh" }),
                )
                .await;
                let doc_id = d["id"].as_str().unwrap().to_owned();
                let v: Value = crate::support::post_json(
                    &s,
                    maker,
                    &format!("/v1/docs/{doc_id}/versions"),
                    serde_json::json!({ "label": "v1" }),
                )
                .await;
                let version_id = v["id"].as_str().unwrap().to_owned();
                let url = path
                    .replace("{user_id}", target["user"]["id"].as_str().unwrap())
                    .replace("{session_id}", &me.session_id)
                    .replace("{room_id}", &room_id)
                    .replace("{channel_id}", &channel_id)
                    .replace("{message_id}", &message_id)
                    .replace("{emoji}", "thumbsup")
                    .replace("{task_id}", &task_ids[0])
                    .replace("{depends_on_id}", &task_ids[1])
                    .replace("{comment_id}", &comment_id)
                    .replace("{doc_id}", &doc_id)
                    .replace("{version_id}", &version_id)
                    .replace("{connection_id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{recording_id}", &uuid::Uuid::now_v7().to_string())
                    .replace("{name}", "00-audio-1.ogg");
                let mut req =
                    s.http.request(method.to_uppercase().parse().unwrap(), s.url(&url)).bearer_auth(&me.access);
                if !body.is_null() {
                    req = req.json(&sample(&doc, &body));
                }
                let status = req.send().await.unwrap().status().as_u16();
                let id = op["operationId"].as_str().unwrap();
                let room_ok = room_role.is_none_or(|need| policy::room_allows(my_room_role, room_role_action(need)));
                let channel_ok = !channel_member_needed || channel_member;
                if policy::allows(role, permission) && room_ok && channel_ok {
                    assert!(
                        status != 401 && status != 403,
                        "{id} as {}: {status}, but the policy allows it",
                        role.as_str()
                    );
                } else {
                    assert_eq!(status, 403, "{id} as {}: the policy refuses it", role.as_str());
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 150, "only {checked} checks");
    s.stop().await;
}

fn room_role_action(need: RoomRole) -> policy::RoomAction {
    match need {
        RoomRole::Viewer | RoomRole::Member => policy::RoomAction::Participate,
        RoomRole::Moderator => policy::RoomAction::Moderate,
        RoomRole::Host => policy::RoomAction::Host,
    }
}
