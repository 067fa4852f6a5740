//! MONAI Label's four roles and what each route asks of its caller.

use std::fmt;

/// A MONAI Label role, named as MONAI Label and its Keycloak realm name it.
///
/// MONAI Label checks roles one by one; medlabel ranks them, so that a realm need not
/// grant every role to its administrators: each role implies the ones below it
/// (admin ⊇ reviewer ⊇ annotator ⊇ user), as Keycloak composite roles are usually set up
/// for MONAI Label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// `monailabel-user`: reads, inference, next sample, sessions.
    User,
    /// `monailabel-annotator`: saves labels, uploads images, scores, downloads the dataset.
    Annotator,
    /// `monailabel-reviewer`: MONAI Label routes ask for no more than annotator; kept
    /// so that reviewers' tokens carry a role medlabel recognises.
    Reviewer,
    /// `monailabel-admin`: removes images and labels, trains, batch-infers, reads the
    /// model files, the logs and the audit trail.
    Admin,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::User, Role::Annotator, Role::Reviewer, Role::Admin];

    /// The role's name in tokens and in MONAI Label's messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::User => "monailabel-user",
            Role::Annotator => "monailabel-annotator",
            Role::Reviewer => "monailabel-reviewer",
            Role::Admin => "monailabel-admin",
        }
    }

    /// The role a token's role name stands for; other names (a realm's
    /// `offline_access`, say) are none of MONAI Label's.
    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }

    /// Whether holding `self` allows what `required` allows.
    pub fn implies(self, required: Role) -> bool {
        self >= required
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a route asks of its caller when authentication is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: the auth settings, the login itself and the API docs.
    Public,
    /// Any valid token, whatever its roles (`/auth/token/valid`).
    Authenticated,
    /// A valid token with this role (or one that implies it).
    Role(Role),
}

impl serde::Serialize for Role {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

impl<'de> serde::Deserialize<'de> for Role {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        Role::parse(&name).ok_or_else(|| serde::de::Error::custom(format!("unknown role {name:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_rank_admin_over_reviewer_over_annotator_over_user() {
        assert!(Role::Admin.implies(Role::User));
        assert!(Role::Admin.implies(Role::Admin));
        assert!(Role::Reviewer.implies(Role::Annotator));
        assert!(Role::Annotator.implies(Role::User));
        assert!(!Role::Annotator.implies(Role::Reviewer));
        assert!(!Role::User.implies(Role::Annotator));
        assert!(!Role::Reviewer.implies(Role::Admin));
    }

    #[test]
    fn names_round_trip() {
        for role in Role::ALL {
            assert_eq!(Role::parse(role.name()), Some(role));
        }
        assert_eq!(Role::parse("offline_access"), None);
        assert_eq!(Role::parse("admin"), None);
    }
}
