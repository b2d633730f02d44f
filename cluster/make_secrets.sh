#!/usr/bin/env bash
# Make the folder of secrets the launcher configs ship to every node (file_mounts):
#   auth_token        Ray's token (RAY_AUTH_MODE=token on every node, ~/.ray/auth_token)
#   mlflow-auth.ini   the MLflow server's basic-auth config (admin user and password)
#   mlflow-server.env the server's MLFLOW_FLASK_SERVER_SECRET_KEY (CSRF protection)
#   mlflow.env        MLFLOW_TRACKING_USERNAME / _PASSWORD for every process that logs
# Usage: cluster/make_secrets.sh [FOLDER]      (default ~/.goldnas-cluster; refuses to overwrite)
set -euo pipefail
dir=${1:-$HOME/.goldnas-cluster}
if [ -e "$dir" ]; then echo "error: $dir exists; remove it first or name another folder" >&2; exit 2; fi
mkdir -p "$dir" && chmod 700 "$dir"
rand() { python3 -c "import secrets; print(secrets.token_hex(32))"; }
password=$(rand)
umask 077
rand > "$dir/auth_token"
cat > "$dir/mlflow-auth.ini" <<INI
[mlflow]
default_permission = READ
database_uri = sqlite:///mlflow-auth.db
admin_username = goldnas
admin_password = $password
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
printf 'MLFLOW_FLASK_SERVER_SECRET_KEY=%s\n' "$(rand)" > "$dir/mlflow-server.env"
printf 'MLFLOW_TRACKING_USERNAME=goldnas\nMLFLOW_TRACKING_PASSWORD=%s\n' "$password" > "$dir/mlflow.env"
echo "secrets in $dir: auth_token, mlflow-auth.ini, mlflow-server.env, mlflow.env (keep them out of git)"
