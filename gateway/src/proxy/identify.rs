//! Who is calling: a key or client certificate of `[[users]]`, or an access token of an
//! `[oauth]` issuer; and, once the request is read, whether the token's scopes cover it.
//!
//! Where OAuth is configured, a request without a valid token is answered with the OAuth
//! challenge, so that clients find the metadata; keys and certificates are still accepted there
//! only with `keys_alongside` (a deliberate choice: some clients ignore a configured static header
//! once they see OAuth metadata).

use hyper::{HeaderMap, header::AUTHORIZATION};

use super::{Call, Gateway, Refusal};
use crate::{
    limit::Limiter,
    oauth::{Minted, OAuth, TokenError},
    policy::{AuthError, AuthMethod, Caller, Policy, bearer_token},
};

impl<L: Limiter> Gateway<L> {
    /// The caller, noted in `call`; a verified token is kept in `minted` for the request's life.
    pub(super) async fn identify<'a>(
        &self,
        policy: &'a Policy,
        headers: &HeaderMap,
        call: &mut Call<'a>,
        minted: &'a Minted,
    ) -> Result<&'a Caller, Refusal> {
        let certificate = call.context.peer.certificate.as_ref();
        let Some(oauth) = policy.oauth() else {
            let (caller, method) = policy.authenticate(headers, certificate)?;
            call.context.auth = Some(method);
            return Ok(caller);
        };
        if oauth.keys_alongside() {
            match policy.authenticate(headers, certificate) {
                Ok((caller, method)) => {
                    call.context.auth = Some(method);
                    return Ok(caller);
                }
                // Not a key of a user: perhaps a token.
                Err(AuthError::Missing | AuthError::InvalidKey) => {}
                Err(err) => return Err(err.into()),
            }
        }
        let token = single_bearer(headers, oauth)?;
        let verified = oauth
            .authenticate(token)
            .await
            .map_err(|err| Refusal::token(err, oauth))?;
        let verified = minted.get_or_init(|| verified);
        call.context.auth = Some(AuthMethod::OAuth);
        call.context.issuer = Some(&verified.issuer);
        Ok(&verified.caller)
    }

    /// A token lacking a scope the request needs (every request's required scopes, and those of
    /// the tools it calls) gets 403 `insufficient_scope`.
    pub(super) fn check_scopes(
        &self,
        policy: &Policy,
        call: &Call<'_>,
        minted: &Minted,
    ) -> Result<(), Refusal> {
        let (Some(oauth), Some(verified)) = (policy.oauth(), minted.get()) else {
            return Ok(());
        };
        let needed = oauth.scopes_for(&call.tool_calls());
        let missing = verified.missing_scopes(&needed);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Refusal::insufficient_scope(oauth, &needed, &missing))
        }
    }
}

/// The groups a caller is in, as the identity assertion names them: a token's, or those of the
/// `[groups.*]` rules of a configured user.
pub(super) fn groups_of<'c>(caller: &'c Caller, minted: &'c Minted) -> Vec<&'c str> {
    match minted.get() {
        Some(verified) => verified.groups.iter().map(|group| &**group).collect(),
        None => caller
            .grants
            .iter()
            .flat_map(|grants| grants.origins())
            .filter_map(|origin| origin.strip_prefix("groups."))
            .collect(),
    }
}

/// The one bearer token of the request.
fn single_bearer<'h>(headers: &'h HeaderMap, oauth: &OAuth) -> Result<&'h [u8], Refusal> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(Refusal::token_missing(oauth));
    };
    if values.next().is_some() {
        return Err(Refusal::token(TokenError::Malformed, oauth));
    }
    bearer_token(value.as_bytes()).ok_or_else(|| Refusal::token(TokenError::Malformed, oauth))
}
