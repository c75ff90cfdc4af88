//! Writes clients make — create, replace, delete — with the real API
//! server's rules (only for [`Resource::writable`] resources: Leases).
//!
//! This module owns what a write answers, given the stored objects; it knows
//! nothing about HTTP. The rules are those of the generic registry store and
//! the coordination/v1 Lease strategy of kube-apiserver:
//!
//! - **create** (`POST` to a namespaced collection): 201 with the stored
//!   object; `409 AlreadyExists` if the name is taken; `500` if the body
//!   carries a `resourceVersion` (as etcd storage answers); `400` for an
//!   undecodable body or a namespace other than the URL's; `422 Invalid` when
//!   validation fails (name, `leaseDurationSeconds > 0`,
//!   `leaseTransitions >= 0`, `preferredHolder` only with `strategy`).
//! - **replace** (`PUT`): a `metadata.uid` in the body is a precondition
//!   (`409` on mismatch); an existing object is replaced only if the body's
//!   `metadata.resourceVersion` equals the stored one (`409 Conflict` with
//!   the optimistic-lock message otherwise; `422` without one, since Leases
//!   allow no unconditional update); a missing object is created (201:
//!   Leases allow create-on-update); `400` if the body's name or namespace
//!   differs from the URL's.
//! - **delete**: 200 with a `Success` `Status`; `404` if absent; `409` when a
//!   precondition (`uid`, `resourceVersion`) of the `DeleteOptions` body
//!   fails.
//!
//! The server owns `uid`, `creationTimestamp` and `resourceVersion`: values a
//! client sends are replaced (kept from the stored object on replace). The
//! body is decoded as the typed object, so unknown fields are dropped and
//! wrongly typed ones are a `400`, as from the real server. Every successful
//! write gets the next resourceVersion and reaches open watches. Patch is not
//! served (the clients under test replace with a resourceVersion).

use k8s_openapi::api::coordination::v1::Lease;
use serde_json::{json, Value};

use super::{
    http::status_object,
    state::{Resource, State},
};

/// What a write answers: an HTTP status code and its JSON body.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) code: u16,
    pub(crate) body: Value,
}

/// kube-apiserver's message for a stale resourceVersion.
const OPTIMISTIC_LOCK: &str =
    "the object has been modified; please apply your changes to the latest version and try again";

/// One validation failure: cause reason, field path, detail.
type FieldError = (&'static str, String, String);

fn failure(code: u16, reason: &str, message: &str, details: Option<Value>) -> Answer {
    Answer {
        code,
        body: status_object(code, reason, message, details),
    }
}

fn details(resource: Resource, name: &str) -> Value {
    json!({"name": name, "group": resource.group(), "kind": resource.plural()})
}

fn bad_request(message: &str) -> Answer {
    failure(400, "BadRequest", message, None)
}

fn not_found(resource: Resource, name: &str) -> Answer {
    failure(
        404,
        "NotFound",
        &format!("{} \"{name}\" not found", resource.qualified()),
        Some(details(resource, name)),
    )
}

fn conflict(resource: Resource, name: &str, why: &str) -> Answer {
    failure(
        409,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {} \"{name}\": {why}",
            resource.qualified()
        ),
        Some(details(resource, name)),
    )
}

/// `422 Invalid`; `kind` is how the real server names the type in the
/// message (`Lease.coordination.k8s.io` for validation, the qualified plural
/// for a missing resourceVersion).
fn invalid(kind: &str, group: &str, name: &str, errors: &[FieldError]) -> Answer {
    let line = |(_, field, detail): &FieldError| format!("{field}: {detail}");
    let summary = match errors {
        [one] => line(one),
        many => format!("[{}]", many.iter().map(line).collect::<Vec<_>>().join(", ")),
    };
    let causes: Vec<Value> = errors
        .iter()
        .map(|(reason, field, detail)| json!({"reason": reason, "message": detail, "field": field}))
        .collect();
    failure(
        422,
        "Invalid",
        &format!("{kind} \"{name}\" is invalid: {summary}"),
        Some(
            json!({"name": name, "group": group, "kind": kind.split('.').next().unwrap_or(kind), "causes": causes}),
        ),
    )
}

fn meta_str<'a>(object: &'a Value, field: &str) -> &'a str {
    object
        .pointer(&format!("/metadata/{field}"))
        .and_then(Value::as_str)
        .unwrap_or_default()
}

/// The body as the typed object, re-encoded (drops unknown fields).
fn decode(resource: Resource, body: &[u8]) -> Result<Value, Answer> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| bad_request(&format!("couldn't get version/kind; json parse error: {e}")))?;
    let typed = match resource {
        Resource::Leases => serde_json::from_value::<Lease>(value).and_then(serde_json::to_value),
        other => {
            return Err(failure(
                405,
                "MethodNotAllowed",
                &format!("{} cannot be written", other.qualified()),
                None,
            ))
        }
    };
    typed.map_err(|e| {
        bad_request(&format!(
            "{kind} in version \"{version}\" cannot be handled as a {kind}: {e}",
            kind = resource.kind(),
            version = resource.version()
        ))
    })
}

/// Sets the URL's namespace, refusing a different one in the body.
fn place(object: &mut Value, namespace: &str) -> Result<(), Answer> {
    let given = meta_str(object, "namespace");
    if !given.is_empty() && given != namespace {
        return Err(bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.insert("namespace".into(), Value::String(namespace.to_owned()));
    }
    Ok(())
}

/// Drops what the server assigns, so [`State::upsert`] assigns or keeps it.
fn strip_server_fields(object: &mut Value) {
    if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in ["uid", "creationTimestamp", "resourceVersion"] {
            meta.remove(field);
        }
    }
}

fn is_dns_subdomain(name: &str) -> bool {
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    name.len() <= 253
        && name.split('.').all(|label| {
            label.starts_with(alnum)
                && label.ends_with(alnum)
                && label.chars().all(|c| alnum(c) || c == '-')
        })
}

/// coordination/v1 `ValidateLease`, plus the object name.
fn validate(object: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let name = meta_str(object, "name");
    if name.is_empty() {
        errors.push((
            "FieldValueRequired",
            "metadata.name".to_owned(),
            "Required value: name or generateName is required".to_owned(),
        ));
    } else if !is_dns_subdomain(name) {
        errors.push((
            "FieldValueInvalid",
            "metadata.name".to_owned(),
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character"),
        ));
    }
    let spec = |field: &str| object.pointer(&format!("/spec/{field}"));
    if let Some(d) = spec("leaseDurationSeconds").and_then(Value::as_i64) {
        if d <= 0 {
            errors.push((
                "FieldValueInvalid",
                "spec.leaseDurationSeconds".to_owned(),
                format!("Invalid value: {d}: must be greater than 0"),
            ));
        }
    }
    if let Some(t) = spec("leaseTransitions").and_then(Value::as_i64) {
        if t < 0 {
            errors.push((
                "FieldValueInvalid",
                "spec.leaseTransitions".to_owned(),
                format!("Invalid value: {t}: must be greater than or equal to 0"),
            ));
        }
    }
    let set = |field: &str| {
        spec(field)
            .and_then(Value::as_str)
            .is_some_and(|s| !s.is_empty())
    };
    if set("preferredHolder") && !set("strategy") {
        errors.push((
            "FieldValueForbidden",
            "spec.preferredHolder".to_owned(),
            "Forbidden: may only be specified if `strategy` is defined".to_owned(),
        ));
    }
    errors
}

fn validation_failure(resource: Resource, object: &Value) -> Option<Answer> {
    let errors = validate(object);
    (!errors.is_empty()).then(|| {
        invalid(
            &format!("{}.{}", resource.kind(), resource.group()),
            resource.group(),
            meta_str(object, "name"),
            &errors,
        )
    })
}

/// Stores a validated object and answers `code` with what was stored.
fn store(
    state: &mut State,
    resource: Resource,
    namespace: &str,
    mut object: Value,
    code: u16,
) -> Answer {
    let name = meta_str(&object, "name").to_owned();
    strip_server_fields(&mut object);
    state.upsert(resource, object);
    match state.get(resource, namespace, &name) {
        Some(body) => Answer { code, body },
        None => failure(500, "InternalError", "stored object vanished", None),
    }
}

/// `POST` of `body` to `namespace`'s collection.
pub(crate) fn create(
    state: &mut State,
    resource: Resource,
    namespace: &str,
    body: &[u8],
) -> Answer {
    let mut object = match decode(resource, body) {
        Ok(o) => o,
        Err(answer) => return answer,
    };
    if let Err(answer) = place(&mut object, namespace) {
        return answer;
    }
    if !meta_str(&object, "resourceVersion").is_empty() {
        let why = "resourceVersion should not be set on objects to be created";
        return failure(
            500,
            "InternalError",
            &format!("Internal error occurred: {why}"),
            Some(json!({"causes": [{"message": why}]})),
        );
    }
    if let Some(answer) = validation_failure(resource, &object) {
        return answer;
    }
    let name = meta_str(&object, "name").to_owned();
    if state.get(resource, namespace, &name).is_some() {
        return failure(
            409,
            "AlreadyExists",
            &format!("{} \"{name}\" already exists", resource.qualified()),
            Some(details(resource, &name)),
        );
    }
    store(state, resource, namespace, object, 201)
}

/// `PUT` of `body` to `namespace`/`name`.
pub(crate) fn replace(
    state: &mut State,
    resource: Resource,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Answer {
    let mut object = match decode(resource, body) {
        Ok(o) => o,
        Err(answer) => return answer,
    };
    if let Err(answer) = place(&mut object, namespace) {
        return answer;
    }
    let given = meta_str(&object, "name");
    if given != name {
        return bad_request(&format!(
            "the name of the object ({given}) does not match the name on the URL ({name})"
        ));
    }
    let existing = state.get(resource, namespace, name);
    let uid = meta_str(&object, "uid");
    let stored_uid = existing.as_ref().map_or("", |e| meta_str(e, "uid"));
    if !uid.is_empty() && uid != stored_uid {
        return conflict(
            resource,
            name,
            &format!(
                "Precondition failed: UID in precondition: {uid}, UID in object meta: {stored_uid}"
            ),
        );
    }
    let Some(existing) = existing else {
        // Create-on-update: the body's resourceVersion is not checked.
        return match validation_failure(resource, &object) {
            Some(answer) => answer,
            None => store(state, resource, namespace, object, 201),
        };
    };
    let rv = meta_str(&object, "resourceVersion");
    if rv.is_empty() {
        let error = (
            "FieldValueInvalid",
            "metadata.resourceVersion".to_owned(),
            "Invalid value: 0x0: must be specified for an update".to_owned(),
        );
        return invalid(&resource.qualified(), resource.group(), name, &[error]);
    }
    if rv.parse::<u64>().is_err() {
        return bad_request(&format!("invalid resourceVersion {rv:?}"));
    }
    if rv != meta_str(&existing, "resourceVersion") {
        return conflict(resource, name, OPTIMISTIC_LOCK);
    }
    if let Some(answer) = validation_failure(resource, &object) {
        return answer;
    }
    store(state, resource, namespace, object, 200)
}

/// `DELETE` of `namespace`/`name`; `body` is an optional `DeleteOptions`.
pub(crate) fn delete(
    state: &mut State,
    resource: Resource,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> Answer {
    let Some(existing) = state.get(resource, namespace, name) else {
        return not_found(resource, name);
    };
    let options: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        match serde_json::from_slice(body) {
            Ok(v) => v,
            Err(e) => return bad_request(&format!("invalid DeleteOptions: {e}")),
        }
    };
    for (key, label, field) in [
        ("uid", "UID", "uid"),
        ("resourceVersion", "ResourceVersion", "resourceVersion"),
    ] {
        let wanted = options
            .pointer(&format!("/preconditions/{key}"))
            .and_then(Value::as_str);
        let actual = meta_str(&existing, field);
        if let Some(wanted) = wanted.filter(|w| *w != actual) {
            return conflict(
                resource,
                name,
                &format!("Precondition failed: {label} in precondition: {wanted}, {label} in object meta: {actual}"),
            );
        }
    }
    state.delete(resource, namespace, name);
    let mut details = details(resource, name);
    details["uid"] = Value::String(meta_str(&existing, "uid").to_owned());
    Answer {
        code: 200,
        body: json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "details": details,
        }),
    }
}

#[cfg(test)]
mod tests;
