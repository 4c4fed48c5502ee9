use super::*;

#[test]
fn names_are_environment_variable_names_outside_betcycle() {
    for ok in ["DATABASE_URL", "_x", "token2"] {
        check_name(ok).unwrap();
    }
    for bad in ["", "2FA", "A-B", "A B", "BETCYCLE_TOKEN", "ÄRGER"] {
        assert!(check_name(bad).is_err(), "{bad}");
    }
    assert!(check_value("A", "abc").is_err());
    assert!(check_value("A", "a\0bc").is_err());
    check_value("A", "abcd").unwrap();
}

#[test]
fn a_version_opens_only_in_its_own_slot() {
    let key = MasterKey::generate();
    let scope = Scope::Project { project: 1 };
    let sealed = key.seal("value-1", &context(&scope, "A", 1));
    assert!(key.open(&sealed, &context(&scope, "A", 1)).is_ok());
    assert!(key.open(&sealed, &context(&scope, "A", 2)).is_err());
    assert!(key.open(&sealed, &context(&scope, "B", 1)).is_err());
    assert!(
        key.open(&sealed, &context(&Scope::Project { project: 2 }, "A", 1))
            .is_err()
    );
    assert!(
        key.open(&sealed, &context(&Scope::Instance, "A", 1))
            .is_err()
    );
    assert_eq!(
        Scope::chain(1, Some("prod")),
        vec![
            Scope::Environment {
                project: 1,
                environment: "prod".into()
            },
            Scope::Project { project: 1 },
            Scope::Instance
        ]
    );
}
