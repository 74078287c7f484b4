//! JWT signatures checked with ring instead of jsonwebtoken's RustCrypto backend: RSA
//! (RS256/384/512, PS256/384/512), ECDSA (ES256/384) and EdDSA (Ed25519).
//!
//! The RustCrypto `rsa` crate does its arithmetic with a general big-number library: a
//! signature check takes about 250 us here, so every token the cache has not seen, and every
//! forged one, cost that much CPU (a few thousand bad tokens a second were enough to fill a
//! core). ring checks the same signature in a small fraction of that, and ECDSA and Ed25519
//! signatures faster too. HMAC, signing and the key utilities stay with the RustCrypto
//! provider.
//!
//! ring takes moduli of 2048 to 8192 bits and odd public exponents from 3 to 2^33 - 1; a key
//! outside that (a legacy 1024-bit key, say) keeps the RustCrypto check, so no key that
//! worked before stops working.

use jsonwebtoken::{
    crypto::{rust_crypto, CryptoProvider, JwtVerifier, KeyUtils},
    errors::Result,
    signature, Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind,
};
use ring::signature::{self as ring_sig, RsaParameters, RsaPublicKeyComponents};
use rsa::pkcs1::der::Decode as _;

/// The provider: ring for RSA, ECDSA and Ed25519 signature checks, RustCrypto for the rest.
static PROVIDER: CryptoProvider = CryptoProvider {
    signer_factory: rust_crypto::DEFAULT_PROVIDER.signer_factory,
    verifier_factory: verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_private_key,
        rsa_pub_components_from_public_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .rsa_pub_components_from_public_key,
        ec_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ec_pub_components_from_private_key,
        ed_pub_components_from_private_key: rust_crypto::DEFAULT_PROVIDER
            .key_utils
            .ed_pub_components_from_private_key,
        compute_digest: rust_crypto::DEFAULT_PROVIDER.key_utils.compute_digest,
    },
};

/// Makes [`PROVIDER`] jsonwebtoken's, once per process (before the first token is checked).
pub fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err only when a provider is already installed, which then stays.
        let _ = PROVIDER.install_default();
    });
}

fn verifier(alg: &Algorithm, key: &DecodingKey) -> Result<Box<dyn JwtVerifier>> {
    match ring_key(alg, key) {
        Some(key) => Ok(Box::new(RingVerifier { alg: *alg, key })),
        // Not one of ring's algorithms, not a key of the algorithm's family (the RustCrypto
        // factory refuses it as before), or a key ring does not take.
        None => (rust_crypto::DEFAULT_PROVIDER.verifier_factory)(alg, key),
    }
}

/// `key` as ring checks it for `alg`. ECDSA and EdDSA: an uncompressed point of the
/// algorithm's curve, or a raw Ed25519 key; RSA: within ring's limits (see [`ring_takes`]).
fn ring_key(alg: &Algorithm, key: &DecodingKey) -> Option<RingKey> {
    let (algorithm, len, family): (&'static dyn ring_sig::VerificationAlgorithm, _, _) = match alg {
        Algorithm::ES256 => (&ring_sig::ECDSA_P256_SHA256_FIXED, 65, AlgorithmFamily::Ec),
        Algorithm::ES384 => (&ring_sig::ECDSA_P384_SHA384_FIXED, 97, AlgorithmFamily::Ec),
        Algorithm::EdDSA => (&ring_sig::ED25519, 32, AlgorithmFamily::Ed),
        _ => {
            let params: &'static RsaParameters = match alg {
                Algorithm::RS256 => &ring_sig::RSA_PKCS1_2048_8192_SHA256,
                Algorithm::RS384 => &ring_sig::RSA_PKCS1_2048_8192_SHA384,
                Algorithm::RS512 => &ring_sig::RSA_PKCS1_2048_8192_SHA512,
                Algorithm::PS256 => &ring_sig::RSA_PSS_2048_8192_SHA256,
                Algorithm::PS384 => &ring_sig::RSA_PSS_2048_8192_SHA384,
                Algorithm::PS512 => &ring_sig::RSA_PSS_2048_8192_SHA512,
                _ => return None,
            };
            let (n, e) = components(key).filter(|(n, e)| ring_takes(n, e))?;
            return Some(RingKey::Rsa { params, n, e });
        }
    };
    match key.kind() {
        DecodingKeyKind::SecretOrDer(b)
            if key.family() == family && b.len() == len && (len == 32 || b[0] == 4) =>
        {
            Some(RingKey::Other {
                algorithm,
                key: b.clone(),
            })
        }
        _ => None,
    }
}

/// The modulus and exponent of an RSA key, big-endian without leading zeros.
fn components(key: &DecodingKey) -> Option<(Vec<u8>, Vec<u8>)> {
    if key.family() != AlgorithmFamily::Rsa {
        return None;
    }
    let trim = |b: &[u8]| {
        let zeros = b.iter().take_while(|&&x| x == 0).count();
        b[zeros..].to_vec()
    };
    match key.kind() {
        DecodingKeyKind::RsaModulusExponent { n, e } => Some((trim(n), trim(e))),
        // PKCS#1 RSAPublicKey, as jsonwebtoken keeps a PEM key.
        DecodingKeyKind::SecretOrDer(der) => {
            let k = rsa::pkcs1::RsaPublicKey::from_der(der).ok()?;
            Some((
                trim(k.modulus.as_bytes()),
                trim(k.public_exponent.as_bytes()),
            ))
        }
    }
}

/// Whether ring's limits take the key: 2048 to 8192 bits, an odd exponent of 3 to 2^33 - 1.
fn ring_takes(n: &[u8], e: &[u8]) -> bool {
    let bits = |b: &[u8]| {
        b.first().map_or(0, |&top| {
            (b.len() - 1) * 8 + (8 - top.leading_zeros() as usize)
        })
    };
    let e_value = (e.len() <= 8).then(|| e.iter().fold(0u64, |v, &b| v << 8 | u64::from(b)));
    (2048..=8192).contains(&bits(n)) && e_value.is_some_and(|e| e >= 3 && e % 2 == 1 && e < 1 << 33)
}

enum RingKey {
    Rsa {
        params: &'static RsaParameters,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// An ECDSA (fixed-size signature) or Ed25519 key.
    Other {
        algorithm: &'static dyn ring_sig::VerificationAlgorithm,
        key: Vec<u8>,
    },
}

struct RingVerifier {
    alg: Algorithm,
    key: RingKey,
}

impl signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(&self, msg: &[u8], sig: &Vec<u8>) -> std::result::Result<(), signature::Error> {
        match &self.key {
            RingKey::Rsa { params, n, e } => {
                RsaPublicKeyComponents { n, e }.verify(params, msg, sig)
            }
            RingKey::Other { algorithm, key } => {
                ring_sig::UnparsedPublicKey::new(*algorithm, key).verify(msg, sig)
            }
        }
        .map_err(|_| signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.alg
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{encode, EncodingKey, Header, Validation};
    use rsa::pkcs1::{EncodeRsaPrivateKey as _, EncodeRsaPublicKey as _};
    use rsa::traits::PublicKeyParts as _;

    use super::*;

    /// Tokens signed by RustCrypto check out with ring (PEM and JWK-style keys alike), a
    /// tampered one does not, and a 1024-bit key, which ring refuses, still works.
    #[test]
    fn ring_checks_what_rust_crypto_signs() {
        install();
        let claims = serde_json::json!({"sub": "a", "exp": 4_000_000_000u64});
        for bits in [2048, 1024] {
            let private = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, bits).unwrap();
            let pem = private.to_pkcs1_pem(Default::default()).unwrap();
            let public = rsa::RsaPublicKey::from(&private);
            let by_pem = DecodingKey::from_rsa_pem(
                public.to_pkcs1_pem(Default::default()).unwrap().as_bytes(),
            )
            .unwrap();
            let by_parts = DecodingKey::from_rsa_raw_components(
                &public.n().to_bytes_be(),
                &public.e().to_bytes_be(),
            );
            let signing = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
            for alg in [
                Algorithm::RS256,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
            ] {
                let token = encode(&Header::new(alg), &claims, &signing).unwrap();
                let mut validation = Validation::new(alg);
                validation.required_spec_claims.clear();
                for key in [&by_pem, &by_parts] {
                    let ok = jsonwebtoken::decode::<serde_json::Value>(&token, key, &validation);
                    assert!(ok.is_ok(), "{bits} bits {alg:?}: {ok:?}");
                    let mut bad = token.clone().into_bytes();
                    let at = bad.len() - 10;
                    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
                    let bad = String::from_utf8(bad).unwrap();
                    let err = jsonwebtoken::decode::<serde_json::Value>(&bad, key, &validation)
                        .unwrap_err();
                    assert_eq!(
                        *err.kind(),
                        jsonwebtoken::errors::ErrorKind::InvalidSignature,
                        "{bits} bits {alg:?}"
                    );
                }
            }
            let (n, e) = components(&by_pem).unwrap();
            assert_eq!(ring_takes(&n, &e), bits == 2048);
        }
    }

    /// ES256, ES384 and EdDSA tokens check out with ring; tampered ones and tokens for the
    /// other curve do not.
    #[test]
    fn ring_checks_ecdsa_and_eddsa() {
        install();
        let claims = serde_json::json!({"sub": "a", "exp": 4_000_000_000u64});
        let pairs = [
            (Algorithm::ES256, &rcgen::PKCS_ECDSA_P256_SHA256),
            (Algorithm::ES384, &rcgen::PKCS_ECDSA_P384_SHA384),
            (Algorithm::EdDSA, &rcgen::PKCS_ED25519),
        ];
        for (alg, scheme) in pairs {
            let pair = rcgen::KeyPair::generate_for(scheme).unwrap();
            let private = pair.serialize_pem();
            let public = pair.public_key_pem();
            let (signing, key) = if alg == Algorithm::EdDSA {
                (
                    EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
                    DecodingKey::from_ed_pem(public.as_bytes()).unwrap(),
                )
            } else {
                (
                    EncodingKey::from_ec_pem(private.as_bytes()).unwrap(),
                    DecodingKey::from_ec_pem(public.as_bytes()).unwrap(),
                )
            };
            let token = encode(&Header::new(alg), &claims, &signing).unwrap();
            let mut validation = Validation::new(alg);
            validation.required_spec_claims.clear();
            let ok = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation);
            assert!(ok.is_ok(), "{alg:?}: {ok:?}");
            let mut bad = token.clone().into_bytes();
            let at = bad.len() - 10;
            bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
            let bad = String::from_utf8(bad).unwrap();
            assert!(jsonwebtoken::decode::<serde_json::Value>(&bad, &key, &validation).is_err());
        }
        // A P-384 key for an ES256 token: refused (by the RustCrypto check, which takes it).
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let key = DecodingKey::from_ec_pem(p384.public_key_pem().as_bytes()).unwrap();
        let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let signing = EncodingKey::from_ec_pem(p256.serialize_pem().as_bytes()).unwrap();
        let token = encode(&Header::new(Algorithm::ES256), &claims, &signing).unwrap();
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        assert!(jsonwebtoken::decode::<serde_json::Value>(&token, &key, &validation).is_err());
    }

    #[test]
    fn ring_limits() {
        let n2048 = [&[0x80][..], &[0u8; 255][..]].concat();
        let n1024 = [&[0xff][..], &[0u8; 127][..]].concat();
        assert!(ring_takes(&n2048, &[1, 0, 1]));
        assert!(
            !ring_takes(&n1024, &[1, 0, 1]),
            "1024-bit keys stay with RustCrypto"
        );
        assert!(!ring_takes(&n2048, &[1, 0, 0]), "even exponent");
        assert!(!ring_takes(&n2048, &[1]), "exponent 1");
        assert!(
            !ring_takes(&n2048, &[2, 0, 0, 0, 1]),
            "exponent of 2^33 + 1"
        );
    }
}
