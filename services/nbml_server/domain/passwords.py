"""Password rules for new accounts, after NIST SP 800-63B (5.1.1.2): a minimum length,
no composition rules, and a refusal of passwords that are easy to guess - the most
common ones, repetitive ones, and those built on the user name (which is public).

Each broken rule is one violation on the field `password`; no message repeats the
password.
"""

from nbml_server.errors import FieldViolation

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 1024
MIN_DISTINCT_CHARACTERS = 4

# The most common passwords of 8 characters or more (leaked-password lists), and the
# service's own name; compared without case.
COMMON_PASSWORDS = frozenset({
    "password", "password1", "password12", "password123", "password1234", "password!",
    "passw0rd", "p@ssw0rd", "p@ssword", "passwort", "motdepasse", "contraseña",
    "12345678", "123456789", "1234567890", "0123456789", "987654321", "87654321",
    "12341234", "11223344", "12344321", "123123123", "123456789a", "12345678a",
    "1q2w3e4r", "1q2w3e4r5t", "1q2w3e4r5t6y", "q1w2e3r4", "q1w2e3r4t5", "1qaz2wsx",
    "1qazxsw2", "zaq12wsx", "qazwsxedc", "qwertyui", "qwertyuiop", "qwerty12",
    "qwerty123", "qwerty1234", "asdfghjk", "asdfghjkl", "zxcvbnm1", "zxcvbnm123",
    "abcd1234", "abc12345", "abc123456", "aa123456", "a1b2c3d4", "abcdefgh",
    "iloveyou", "iloveyou1", "sunshine", "princess", "football", "baseball",
    "basketball", "superman", "starwars", "whatever", "computer", "internet",
    "trustno1", "welcome1", "welcome123", "letmein1", "letmein!", "changeme",
    "changeme1", "secret123", "admin123", "admin1234", "administrator", "adminadmin",
    "rootroot", "testtest", "test1234", "passpass", "qwerty12345", "michelle",
    "jennifer", "liverpool", "chocolate", "butterfly", "pokemon1", "mustang1",
    "nobrainsml", "no brains ml", "nobrains", "nbml1234",
})


def password_violations(username: str, password: str) -> list[tuple[FieldViolation, str]]:
    """Each rule `password` breaks, with its reason; empty when it is acceptable."""
    def broken(description: str, reason: str) -> tuple[FieldViolation, str]:
        return FieldViolation("password", description), reason

    if not MIN_PASSWORD_LENGTH <= len(password) <= MAX_PASSWORD_LENGTH:
        return [broken(f"must be {MIN_PASSWORD_LENGTH} to {MAX_PASSWORD_LENGTH} characters",
                       "INVALID_PASSWORD")]
    violations = []
    if password.lower() in COMMON_PASSWORDS:
        violations.append(broken("is one of the most common passwords; choose another",
                                 "PASSWORD_TOO_COMMON"))
    if len(set(password)) < MIN_DISTINCT_CHARACTERS:
        violations.append(broken(f"must use at least {MIN_DISTINCT_CHARACTERS} different "
                                 "characters", "PASSWORD_TOO_REPETITIVE"))
    besides_name = password.lower().replace(username.lower(), "") if username else password
    if len(besides_name) < MIN_PASSWORD_LENGTH:
        violations.append(broken(f"must have at least {MIN_PASSWORD_LENGTH} characters "
                                 "besides the user name", "PASSWORD_CONTAINS_USERNAME"))
    return violations
