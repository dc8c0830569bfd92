//! Accounts: sign-up (with its limit, validation and welcome email), one's own profile and
//! sign-in history, and deleting one's account.

use super::*;

impl Accounts<'_> {
    pub async fn register(
        &self,
        input: Registration,
        caller: Option<&Principal>,
        client: &ClientInfo,
    ) -> Result<User, Error> {
        let role = match input.role.as_deref().map(str::trim) {
            None | Some("") | Some("user") => Role::User,
            Some("admin") => Role::Admin,
            Some(_) => {
                return Err(Error::Validation(vec![crate::error::FieldError::new(
                    "role",
                    "Role must be \"user\" or \"admin\".",
                )]))
            }
        };
        // A signed-in administrator (not a key) may create administrators.
        let admin_caller =
            caller.is_some_and(|c| c.user.role == Role::Admin && c.session_id().is_ok());
        if role == Role::Admin && !admin_caller {
            return Err(Error::Forbidden(
                "Only an administrator can create administrator accounts.",
            ));
        }
        self.create_account(input, role, Some(client)).await
    }

    /// Validates and creates the account with its welcome email; `client` is counted
    /// against the sign-up limit (the command line has none).
    pub(super) async fn create_account(
        &self,
        input: Registration,
        role: Role,
        client: Option<&ClientInfo>,
    ) -> Result<User, Error> {
        // The limit comes first: an invalid request costs a caller a try like any other.
        if let Some(client) = client {
            let ip = protection::ip_key(client);
            self.take_limits(
                "signup",
                &[(ip.as_str(), self.config.limits.signups_per_ip)],
            )
            .await?;
        }
        let mut errors = ValidationErrors::default();
        let name = errors.check("name", DisplayName::parse(&input.name));
        let username = errors.check("username", Username::parse(&input.username));
        let email = errors.check("email", Email::parse(&input.email));
        let phone = errors.check("phone", Phone::parse(input.phone.as_deref().unwrap_or("")));
        let user_inputs = vec![
            input.username.trim().to_owned(),
            input.name.trim().to_owned(),
            input.email.trim().to_owned(),
        ];
        let password = errors.check(
            "password",
            self.passwords.judge(input.password, user_inputs).await?,
        );
        let (Some(name), Some(username), Some(email), Some(phone), Some(password)) =
            (name, username, email, phone, password)
        else {
            return Err(errors.into());
        };
        let password_hash = self.passwords.hash(password.expose().to_owned()).await?;
        let (verification, welcome) = self.welcome(name.as_str(), email.as_str())?;
        let user = self
            .store
            .create_user(
                &NewUser {
                    uid: UserUid::new(uuid::Uuid::new_v4().to_string()),
                    username,
                    name,
                    email,
                    phone,
                    password_hash,
                    role,
                    now: self.clock.now(),
                },
                &verification,
                &welcome,
            )
            .await?;
        self.mail_wake.notify_one();
        tracing::info!(user = %user.uid, "account created");
        Ok(user)
    }

    pub async fn update_profile(
        &self,
        principal: &Principal,
        name: Option<&str>,
        phone: Option<&str>,
    ) -> Result<User, Error> {
        principal.session_id()?;
        let mut errors = ValidationErrors::default();
        let name = name.and_then(|n| errors.check("name", DisplayName::parse(n)));
        let phone = phone.and_then(|p| errors.check("phone", Phone::parse(p)));
        errors.into_result()?;
        let change = ProfileChange { name, phone };
        Ok(self
            .store
            .update_profile(principal.user.db_id, &change)
            .await?)
    }

    /// The caller's sign-in history, newest first.
    pub async fn login_history(
        &self,
        principal: &Principal,
        limit: i64,
    ) -> Result<Vec<crate::store::LoginRecord>, Error> {
        self.own_profile(principal)?;
        Ok(self
            .store
            .login_history(principal.user.db_id, limit.clamp(1, 200))
            .await?)
    }

    /// Deleting the account needs the password again.
    pub async fn delete_account(
        &self,
        principal: &Principal,
        password: String,
        client: &ClientInfo,
    ) -> Result<(), Error> {
        principal.session_id()?;
        if password.is_empty() {
            return Err(Error::Validation(vec![crate::error::FieldError::new(
                "password",
                "Password is required.",
            )]));
        }
        self.verify_current_password(&principal.user, password, client)
            .await?;
        self.store.delete_user(principal.user.db_id).await?;
        tracing::info!(user = %principal.user.uid, "account deleted");
        Ok(())
    }
}
