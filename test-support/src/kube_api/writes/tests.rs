//! The write rules on [`State`] directly (the HTTP side is covered in
//! `lease_tests`).

use super::*;

fn lease(name: &str, holder: &str, rv: Option<&str>) -> Vec<u8> {
    let mut v = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": 15, "leaseTransitions": 0},
    });
    if let Some(rv) = rv {
        v["metadata"]["resourceVersion"] = json!(rv);
    }
    serde_json::to_vec(&v).unwrap()
}

fn rv_of(answer: &Answer) -> String {
    answer.body["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn create_assigns_metadata_and_refuses_a_taken_name() {
    let mut s = State::default();
    let a = create(&mut s, Resource::Leases, "ns", &lease("l", "a", None));
    assert_eq!(a.code, 201);
    assert_eq!(a.body["kind"], "Lease");
    assert_eq!(a.body["metadata"]["namespace"], "ns");
    assert!(a.body["metadata"]["uid"].is_string());
    assert!(a.body["metadata"]["creationTimestamp"].is_string());
    let taken = create(&mut s, Resource::Leases, "ns", &lease("l", "b", None));
    assert_eq!(taken.code, 409);
    assert_eq!(taken.body["reason"], "AlreadyExists");
    assert_eq!(
        taken.body["message"],
        "leases.coordination.k8s.io \"l\" already exists"
    );
    assert_eq!(
        taken.body["details"],
        json!({"name": "l", "group": "coordination.k8s.io", "kind": "leases"})
    );
    let stored = s.get(Resource::Leases, "ns", "l").unwrap();
    assert_eq!(
        stored["spec"]["holderIdentity"], "a",
        "the loser changed nothing"
    );
    // Same name in another namespace is another object.
    assert_eq!(
        create(&mut s, Resource::Leases, "other", &lease("l", "b", None)).code,
        201
    );
}

#[test]
fn create_rejects_what_the_real_server_rejects() {
    let mut s = State::default();
    let with_rv = create(&mut s, Resource::Leases, "ns", &lease("l", "a", Some("7")));
    assert_eq!(
        (with_rv.code, with_rv.body["reason"].as_str()),
        (500, Some("InternalError"))
    );
    assert!(with_rv.body["message"]
        .as_str()
        .unwrap()
        .contains("resourceVersion should not be set on objects to be created"));
    let mut elsewhere: Value = serde_json::from_slice(&lease("l", "a", None)).unwrap();
    elsewhere["metadata"]["namespace"] = json!("other");
    let a = create(
        &mut s,
        Resource::Leases,
        "ns",
        &serde_json::to_vec(&elsewhere).unwrap(),
    );
    assert_eq!(
        (a.code, a.body["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let mut bad: Value = serde_json::from_slice(&lease("l", "a", None)).unwrap();
    bad["spec"]["leaseDurationSeconds"] = json!(0);
    bad["spec"]["leaseTransitions"] = json!(-1);
    let a = create(
        &mut s,
        Resource::Leases,
        "ns",
        &serde_json::to_vec(&bad).unwrap(),
    );
    assert_eq!((a.code, a.body["reason"].as_str()), (422, Some("Invalid")));
    assert_eq!(
        a.body["message"],
        "Lease.coordination.k8s.io \"l\" is invalid: [spec.leaseDurationSeconds: Invalid value: 0: must be greater than 0, spec.leaseTransitions: Invalid value: -1: must be greater than or equal to 0]"
    );
    assert_eq!(
        a.body["details"]["causes"][0]["field"],
        "spec.leaseDurationSeconds"
    );
    let a = create(
        &mut s,
        Resource::Leases,
        "ns",
        &lease("Bad_Name", "a", None),
    );
    assert_eq!(a.code, 422);
    let a = create(&mut s, Resource::Leases, "ns", b"{not json");
    assert_eq!(a.code, 400);
    let wrong_type = br#"{"metadata":{"name":"l"},"spec":{"leaseTransitions":"many"}}"#;
    let a = create(&mut s, Resource::Leases, "ns", wrong_type);
    assert_eq!(a.code, 400);
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .starts_with("Lease in version \"v1\" cannot be handled as a Lease"));
    let pod = br#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"l"}}"#;
    assert_eq!(create(&mut s, Resource::Leases, "ns", pod).code, 400);
    assert!(
        s.get(Resource::Leases, "ns", "l").is_none(),
        "nothing was stored"
    );
    assert_eq!(
        create(&mut s, Resource::Pods, "ns", pod).code,
        405,
        "only leases are writable"
    );
}

#[test]
fn replace_checks_the_resource_version() {
    let mut s = State::default();
    let created = create(&mut s, Resource::Leases, "ns", &lease("l", "a", None));
    let rv1 = rv_of(&created);
    let updated = replace(
        &mut s,
        Resource::Leases,
        "ns",
        "l",
        &lease("l", "b", Some(&rv1)),
    );
    assert_eq!(updated.code, 200);
    let rv2 = rv_of(&updated);
    assert!(rv2.parse::<u64>().unwrap() > rv1.parse::<u64>().unwrap());
    assert_eq!(updated.body["spec"]["holderIdentity"], "b");
    assert_eq!(
        updated.body["metadata"]["uid"],
        created.body["metadata"]["uid"]
    );
    assert_eq!(
        updated.body["metadata"]["creationTimestamp"],
        created.body["metadata"]["creationTimestamp"]
    );
    let stale = replace(
        &mut s,
        Resource::Leases,
        "ns",
        "l",
        &lease("l", "c", Some(&rv1)),
    );
    assert_eq!(
        (stale.code, stale.body["reason"].as_str()),
        (409, Some("Conflict"))
    );
    assert_eq!(
        stale.body["message"],
        "Operation cannot be fulfilled on leases.coordination.k8s.io \"l\": the object has been modified; please apply your changes to the latest version and try again"
    );
    let unconditional = replace(&mut s, Resource::Leases, "ns", "l", &lease("l", "c", None));
    assert_eq!(
        (unconditional.code, unconditional.body["reason"].as_str()),
        (422, Some("Invalid"))
    );
    assert_eq!(
        unconditional.body["message"],
        "leases.coordination.k8s.io \"l\" is invalid: metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"
    );
    let renamed = replace(
        &mut s,
        Resource::Leases,
        "ns",
        "other",
        &lease("l", "c", Some(&rv2)),
    );
    assert_eq!(renamed.code, 400);
    let stored = s.get(Resource::Leases, "ns", "l").unwrap();
    assert_eq!(
        stored["spec"]["holderIdentity"], "b",
        "failed writes change nothing"
    );
    assert_eq!(stored["metadata"]["resourceVersion"], rv2.as_str());
}

#[test]
fn replace_honours_the_uid_precondition_and_creates_missing_leases() {
    let mut s = State::default();
    let created = create(&mut s, Resource::Leases, "ns", &lease("l", "a", None));
    let mut body: Value = serde_json::from_slice(&lease("l", "b", Some(&rv_of(&created)))).unwrap();
    body["metadata"]["uid"] = json!("someone-else");
    let a = replace(
        &mut s,
        Resource::Leases,
        "ns",
        "l",
        &serde_json::to_vec(&body).unwrap(),
    );
    assert_eq!(a.code, 409);
    assert!(a.body["message"]
        .as_str()
        .unwrap()
        .contains("Precondition failed: UID in precondition: someone-else, UID in object meta: "));
    // Leases allow create-on-update; the body's resourceVersion is not
    // checked then.
    let a = replace(
        &mut s,
        Resource::Leases,
        "ns",
        "new",
        &lease("new", "a", Some("12345")),
    );
    assert_eq!(a.code, 201);
    assert_eq!(a.body["spec"]["holderIdentity"], "a");
}

#[test]
fn unknown_fields_are_dropped() {
    let mut s = State::default();
    let body = br#"{"metadata":{"name":"l"},"spec":{"holderIdentity":"a","bogus":1},"extra":true}"#;
    let a = create(&mut s, Resource::Leases, "ns", body);
    assert_eq!(a.code, 201);
    assert!(a.body.get("extra").is_none());
    assert!(a.body["spec"].get("bogus").is_none());
    assert_eq!(a.body["apiVersion"], "coordination.k8s.io/v1");
}

#[test]
fn delete_checks_preconditions() {
    let mut s = State::default();
    let created = create(&mut s, Resource::Leases, "ns", &lease("l", "a", None));
    let uid = created.body["metadata"]["uid"].as_str().unwrap().to_owned();
    let stale = json!({"preconditions": {"resourceVersion": "1"}});
    let a = delete(
        &mut s,
        Resource::Leases,
        "ns",
        "l",
        &serde_json::to_vec(&stale).unwrap(),
    );
    assert_eq!(a.code, 409);
    assert!(a.body["message"].as_str().unwrap().contains(&format!(
        "Precondition failed: ResourceVersion in precondition: 1, ResourceVersion in object meta: {}",
        rv_of(&created)
    )));
    let ok = json!({"preconditions": {"uid": uid, "resourceVersion": rv_of(&created)}});
    let a = delete(
        &mut s,
        Resource::Leases,
        "ns",
        "l",
        &serde_json::to_vec(&ok).unwrap(),
    );
    assert_eq!(a.code, 200);
    assert_eq!(a.body["status"], "Success");
    assert_eq!(a.body["details"]["uid"], uid.as_str());
    assert_eq!(delete(&mut s, Resource::Leases, "ns", "l", b"").code, 404);
    let kinds: Vec<_> = s.since(0).iter().map(|e| e.kind).collect();
    assert_eq!(kinds, ["ADDED", "DELETED"], "writes reach watches");
}
