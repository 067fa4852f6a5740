"""The template's auth promises, checked offline (run by scripts/check-infra.sh with
the SAM venv's Python, whose cfn-lint parses CloudFormation's YAML tags).

sam validate and cfn-lint check that the Rules section is well formed, not what it
decides for a given set of parameters; this evaluates the Rules the way CloudFormation
does before a deploy, for the parameter sets that matter, and checks that every route
but the login ones sits behind the authorizer, that preflights are left to API
Gateway's CORS allowlist, that the access log names the caller, and that the functions
get the issuer. Exits non-zero with the broken promises listed.

Usage: check-template-rules.py <template.yaml>
"""

import sys

from cfnlint.decode import decode


def evaluate(node, params, conditions):
    """The value of an intrinsic-function expression under `params`."""
    if isinstance(node, list):
        return [evaluate(x, params, conditions) for x in node]
    if not isinstance(node, dict) or len(node) != 1:
        return node
    ((name, arg),) = node.items()
    ev = lambda x: evaluate(x, params, conditions)  # noqa: E731
    if name == "Ref":
        return params[arg]
    if name == "Condition":
        return ev(conditions[arg])
    if name == "Fn::Equals":
        a, b = ev(arg[0]), ev(arg[1])
        return str(a) == str(b)
    if name == "Fn::Not":
        return not ev(arg[0])
    if name == "Fn::And":
        return all(ev(x) for x in arg)
    if name == "Fn::Or":
        return any(ev(x) for x in arg)
    if name == "Fn::Join":
        return arg[0].join(ev(arg[1]))
    raise ValueError(f"no evaluator for {name}")


def failed_rules(template, overrides):
    """The names of the Rules whose assertions fail for these parameter values."""
    params = {}
    for name, spec in template["Parameters"].items():
        value = overrides.get(name, spec.get("Default", ""))
        if spec["Type"] == "CommaDelimitedList":
            value = [] if value == "" else value.split(",")
        params[name] = value
    conditions = template.get("Conditions", {})
    failed = []
    for name, rule in template.get("Rules", {}).items():
        if "RuleCondition" in rule and not evaluate(rule["RuleCondition"], params, conditions):
            continue
        if not all(evaluate(a["Assert"], params, conditions) for a in rule["Assertions"]):
            failed.append(name)
    return failed


def main():
    template, matches = decode(sys.argv[1])
    if matches:
        sys.exit(f"cannot parse {sys.argv[1]}: {matches}")
    problems = []

    issuer = {"JwtIssuer": "https://idp.example.org/realms/medlabel", "JwtAudience": "medlabel"}
    cases = [
        ({"EnvironmentName": "prod"}, ["ProdNeedsIssuer"]),
        ({"EnvironmentName": "prod", "AllowOpenApi": "false"}, ["ProdNeedsIssuer"]),
        ({"EnvironmentName": "prod", **issuer}, []),
        ({"EnvironmentName": "prod", "AllowOpenApi": "true"}, []),
        ({"EnvironmentName": "prod", "JwtIssuer": issuer["JwtIssuer"]}, ["JwtNeedsAudience"]),
        ({"EnvironmentName": "dev"}, []),
    ]
    for overrides, expected in cases:
        got = failed_rules(template, overrides)
        if got != expected:
            problems.append(f"parameters {overrides}: rules failing {got}, expected {expected}")

    public = {"GET /auth", "POST /auth/token"}
    for name, resource in template["Resources"].items():
        if resource["Type"] != "AWS::ApiGatewayV2::Route":
            continue
        props = resource["Properties"]
        key = props["RouteKey"]
        auth = props.get("AuthorizationType")
        if key in public:
            if auth != "NONE":
                problems.append(f"{name} ({key}) must be reachable without a token")
        elif auth != {"Fn::If": ["HasJwt", "JWT", "NONE"]}:
            problems.append(f"{name} ({key}) is not behind the JWT authorizer")

    api = template["Resources"]["HttpApi"]["Properties"]
    cors = api.get("CorsConfiguration", {}).get("Fn::If", [None])
    if cors[0] != "HasCors" or cors[1].get("AllowOrigins") != {"Ref": "CorsAllowOrigins"}:
        problems.append("HttpApi has no CorsConfiguration from the CorsAllowOrigins allowlist")
    log = template["Resources"]["HttpApiStage"]["Properties"]["AccessLogSettings"]["Format"]
    if "$context.authorizer.claims.sub" not in log:
        problems.append("the access log does not record the caller's sub")
    env = template["Globals"]["Function"]["Environment"]["Variables"]
    for name in ["MEDLABEL_AUTH_ISSUER", "MEDLABEL_AUTH_AUDIENCE", "MEDLABEL_AUTH_ROLES_CLAIM"]:
        if name not in env:
            problems.append(f"the functions do not get {name}")

    if problems:
        print("check-template-rules: FAILED", *problems, sep="\n  ", file=sys.stderr)
        sys.exit(1)
    print(f"check-template-rules: {len(cases)} parameter sets and the auth settings hold")


if __name__ == "__main__":
    main()
