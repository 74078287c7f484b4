//! Checks of claims shared by JWTs and introspection answers, and what an identity is made of.

use serde_json::{Map, Value};

use super::{config::ClaimNames, Failure, Verified};

/// A NumericDate claim: absent, or a JSON number (a string such as `"9999999999"` is refused,
/// whatever a library would make of it).
fn numeric(claims: &Map<String, Value>, name: &'static str) -> Result<Option<f64>, Failure> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(v) if v.is_finite() => Ok(Some(v)),
            _ => Err(Failure::BadClaim(name)),
        },
        Some(_) => Err(Failure::BadClaim(name)),
    }
}

/// exp, nbf and iat against `now` (unix seconds) with `leeway`; the deadline (exp) if any.
pub fn check_times(
    claims: &Map<String, Value>,
    now: u64,
    leeway: u64,
    require_exp: bool,
) -> Result<Option<u64>, Failure> {
    let now = now as f64;
    let leeway = leeway as f64;
    let exp = numeric(claims, "exp")?;
    let nbf = numeric(claims, "nbf")?;
    let iat = numeric(claims, "iat")?;
    match exp {
        None if require_exp => return Err(Failure::MissingClaim("exp".into())),
        Some(exp) if now >= exp + leeway => return Err(Failure::Expired),
        _ => {}
    }
    if nbf.is_some_and(|nbf| nbf > now + leeway) {
        return Err(Failure::NotYetValid);
    }
    if iat.is_some_and(|iat| iat > now + leeway) {
        return Err(Failure::IssuedInFuture);
    }
    // Saturating: a deadline in 1e300 seconds is "never" for the cache too.
    Ok(exp.map(|e| e.max(0.0) as u64))
}

/// `iss` must be this string.
pub fn check_issuer(claims: &Map<String, Value>, issuer: Option<&str>) -> Result<(), Failure> {
    let Some(want) = issuer else { return Ok(()) };
    match claims.get("iss") {
        Some(Value::String(s)) if s == want => Ok(()),
        Some(Value::String(_)) | None => Err(Failure::WrongIssuer),
        Some(_) => Err(Failure::BadClaim("iss")),
    }
}

/// `aud` (a string or an array of strings) must hold one of `audiences`, if any are given.
pub fn check_audience(claims: &Map<String, Value>, audiences: &[String]) -> Result<(), Failure> {
    if audiences.is_empty() {
        return Ok(());
    }
    let has = |s: &str| audiences.iter().any(|a| a == s);
    match claims.get("aud") {
        Some(Value::String(s)) if has(s) => Ok(()),
        Some(Value::String(_)) | None => Err(Failure::WrongAudience),
        Some(Value::Array(list)) => {
            if !list.iter().all(Value::is_string) {
                return Err(Failure::BadClaim("aud"));
            }
            if list.iter().any(|v| v.as_str().is_some_and(has)) {
                Ok(())
            } else {
                Err(Failure::WrongAudience)
            }
        }
        Some(_) => Err(Failure::BadClaim("aud")),
    }
}

pub fn check_required(claims: &Map<String, Value>, required: &[String]) -> Result<(), Failure> {
    for c in required {
        if claims.get(c).is_none_or(Value::is_null) {
            return Err(Failure::MissingClaim(c.clone()));
        }
    }
    Ok(())
}

/// A claim as a list: a string split on spaces (`split`) or whole, or an array's strings.
fn list(v: Option<&Value>, split: bool) -> Vec<String> {
    match v {
        Some(Value::String(s)) if split => s
            .split(' ')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    }
}

/// The identity in verified `claims`; the subject claim must be a non-empty string, or
/// (introspection answers) `fallback` names claims to take it from instead.
pub fn identity(
    claims: Map<String, Value>,
    names: &ClaimNames,
    fallback: &[&str],
    expires: Option<u64>,
) -> Result<Verified, Failure> {
    let subject = std::iter::once(names.subject_claim.as_str())
        .chain(fallback.iter().copied())
        .find_map(|c| match claims.get(c) {
            Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
            _ => None,
        })
        .ok_or_else(|| Failure::MissingClaim(names.subject_claim.clone()))?;
    let scopes = match &names.scope_claim {
        Some(c) => list(claims.get(c), true),
        None => match claims.get("scope") {
            Some(v) => list(Some(v), true),
            None => list(claims.get("scp"), true),
        },
    };
    Ok(Verified {
        subject,
        api_key: None,
        scopes,
        roles: list(claims.get(&names.roles_claim), false),
        groups: list(claims.get(&names.groups_claim), false),
        claims,
        expires,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn times_must_be_numbers_and_in_range() {
        let now = 1_000_000;
        assert_eq!(
            check_times(&map(json!({"exp": now + 10})), now, 0, true),
            Ok(Some(now + 10))
        );
        assert_eq!(
            check_times(&map(json!({})), now, 0, true),
            Err(Failure::MissingClaim("exp".into()))
        );
        assert_eq!(check_times(&map(json!({})), now, 0, false), Ok(None));
        assert_eq!(
            check_times(&map(json!({"exp": now})), now, 0, true),
            Err(Failure::Expired)
        );
        assert_eq!(
            check_times(&map(json!({"exp": now - 5})), now, 10, true),
            Ok(Some(now - 5))
        );
        assert_eq!(
            check_times(&map(json!({"exp": now - 10})), now, 10, true),
            Err(Failure::Expired)
        );
        // CVE-2026-25537: a string exp/nbf is not a number to skip.
        assert_eq!(
            check_times(&map(json!({"exp": "1"})), now, 0, true),
            Err(Failure::BadClaim("exp"))
        );
        assert_eq!(
            check_times(
                &map(json!({"exp": now + 10, "nbf": "99999999999"})),
                now,
                0,
                true
            ),
            Err(Failure::BadClaim("nbf"))
        );
        assert_eq!(
            check_times(&map(json!({"exp": now + 10, "nbf": null})), now, 0, true),
            Err(Failure::BadClaim("nbf"))
        );
        assert_eq!(
            check_times(
                &map(json!({"exp": now + 100, "nbf": now + 50})),
                now,
                10,
                true
            ),
            Err(Failure::NotYetValid)
        );
        assert_eq!(
            check_times(
                &map(json!({"exp": now + 100, "iat": now + 50})),
                now,
                10,
                true
            ),
            Err(Failure::IssuedInFuture)
        );
        assert!(check_times(
            &map(json!({"exp": now + 100, "nbf": now + 5})),
            now,
            10,
            true
        )
        .is_ok());
    }

    #[test]
    fn issuer_and_audience() {
        let c = map(json!({"iss": "a", "aud": ["x", "y"]}));
        assert!(check_issuer(&c, Some("a")).is_ok());
        assert_eq!(check_issuer(&c, Some("b")), Err(Failure::WrongIssuer));
        assert!(check_issuer(&c, None).is_ok());
        assert_eq!(
            check_issuer(&map(json!({"iss": ["a"]})), Some("a")),
            Err(Failure::BadClaim("iss"))
        );
        assert!(check_audience(&c, &["y".into()]).is_ok());
        assert_eq!(
            check_audience(&c, &["z".into()]),
            Err(Failure::WrongAudience)
        );
        assert!(check_audience(&map(json!({"aud": "z"})), &["z".into()]).is_ok());
        assert_eq!(
            check_audience(&map(json!({})), &["z".into()]),
            Err(Failure::WrongAudience)
        );
        assert_eq!(
            check_audience(&map(json!({"aud": ["z", 1]})), &["z".into()]),
            Err(Failure::BadClaim("aud"))
        );
    }

    #[test]
    fn identities_take_scopes_roles_and_groups() {
        let names = ClaimNames {
            subject_claim: "sub".into(),
            scope_claim: None,
            roles_claim: "roles".into(),
            groups_claim: "groups".into(),
        };
        let v = identity(
            map(json!({"sub": "u", "scope": "a  b", "roles": ["r"], "groups": "g"})),
            &names,
            &[],
            None,
        )
        .unwrap();
        assert_eq!(
            (v.scopes, v.roles, v.groups),
            (
                vec!["a".into(), "b".into()],
                vec!["r".into()],
                vec!["g".into()]
            )
        );
        let v = identity(
            map(json!({"sub": "u", "scp": ["a", "b"]})),
            &names,
            &[],
            None,
        )
        .unwrap();
        assert_eq!(v.scopes, ["a", "b"]);
        assert!(identity(map(json!({"sub": 5})), &names, &[], None).is_err());
        let v = identity(map(json!({"client_id": "c"})), &names, &["client_id"], None).unwrap();
        assert_eq!(v.subject, "c");
    }
}
