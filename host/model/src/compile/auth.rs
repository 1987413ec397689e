//! Compiling an `authentication` block, the one code for both sides that declare one: a consumes
//! adapter (credentials the gateway adds to upstream requests) and an exposed adapter
//! (credentials callers must present). Both read only bound variables, never caller inputs.

use crate::diag::{Code, Diagnostics};
use crate::snapshot::Auth;
use crate::spec::Authentication;
use crate::template::{Placeholder, Ref, Template};

/// Which side declares the block: it names the side in diagnostics and says what refusing it
/// means there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Upstream,
    Caller,
}

impl Side {
    fn what_is_refused(self) -> &'static str {
        match self {
            Side::Upstream => "adapter not served",
            // A caller block that cannot be enforced must never leave the adapter open.
            Side::Caller => "the adapter is not served rather than served open",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Side::Upstream => "upstream",
            Side::Caller => "caller",
        }
    }
}

/// Compiles `auth`; `Err` carries the reason the adapter is not served (a diagnostic says it
/// in full).
pub(super) fn compile(
    auth: &Authentication,
    side: Side,
    diags: &mut Diagnostics,
) -> Result<Auth, String> {
    let refused = side.what_is_refused();
    Ok(match auth {
        Authentication::Bearer { token, .. } => Auth::Bearer(Template::compile(token, bind_only)),
        Authentication::ApiKey {
            key,
            value,
            placement,
            at,
        } => {
            let value = Template::compile(value, bind_only);
            match placement.as_deref().unwrap_or("header") {
                "header" => {
                    match http::HeaderName::try_from(key.as_str()) {
                        Ok(name) => Auth::ApiKeyHeader { name, value },
                        Err(_) => {
                            diags
                            .error(
                                Code::BadValue,
                                &at.key("key", at.line),
                                format!("apikey header name is not a valid HTTP header name; {refused}"),
                            )
                            .found(key.clone());
                            return Err(format!("apikey header name \"{key}\" is invalid"));
                        }
                    }
                }
                "query" => Auth::ApiKeyQuery {
                    name: key.clone(),
                    value,
                },
                other => {
                    diags
                        .error(
                            Code::BadValue,
                            &at.key("placement", at.line),
                            format!("unknown apikey placement; {refused}"),
                        )
                        .found(other.to_owned())
                        .expected("header or query");
                    return Err(format!("apikey placement \"{other}\" is unknown"));
                }
            }
        }
        Authentication::Basic {
            username, password, ..
        } => Auth::Basic {
            username: Template::compile(username, bind_only),
            password: Template::compile(password, bind_only),
        },
        Authentication::Other { kind, at } => {
            let side = side.label();
            diags
                .error(
                    Code::Unsupported,
                    at,
                    format!("{side} authentication `{kind}` is not supported; {refused}"),
                )
                .found(kind.clone())
                .expected("bearer, apikey or basic");
            return Err(format!("{side} authentication \"{kind}\" is not supported"));
        }
    })
}

fn bind_only(p: &Placeholder) -> Ref {
    Ref::Bind(p.name.clone())
}
