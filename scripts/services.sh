# Helpers shared by scripts/test and .ci/run: make the real peers the tests
# need available on this machine. Sourced, not run.

apt_install() {
    if [ "$(id -u)" -ne 0 ]; then
        echo "missing Debian packages: $*; install them (as root): apt-get install -y $*" >&2
        return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
}

# Peers used by the tests: SIP (SIPp, kamailio, baresip), audio (sox, espeak-ng), captures.
ensure_debian_packages() {
    local missing=()
    command -v sipp >/dev/null || missing+=(sip-tester)
    command -v kamailio >/dev/null || missing+=(kamailio)
    command -v baresip >/dev/null || missing+=(baresip)
    command -v sox >/dev/null || missing+=(sox)
    command -v espeak-ng >/dev/null || missing+=(espeak-ng)
    command -v tshark >/dev/null || missing+=(tshark)
    command -v python3 >/dev/null || missing+=(python3 python3-venv python3-dev)
    command -v gcc >/dev/null || missing+=(gcc)  # compiles the media hot path (setup.py)
    if [ ${#missing[@]} -gt 0 ]; then apt_install "${missing[@]}"; fi
}

port_open() {  # host port
    (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null
}

wait_port() {  # host port seconds
    local i
    for ((i = 0; i < $3 * 5; i++)); do
        port_open "$1" "$2" && return 0
        sleep 0.2
    done
    return 1
}

# The tests connect to DIALER_TEST_DATABASE_URL (default: postgres@127.0.0.1:5432/test,
# trust auth). Where the server is absent, install and start Debian's, with a password.
ensure_postgres() {
    if [ -n "${DIALER_TEST_DATABASE_URL:-}" ]; then return 0; fi
    if ! command -v pg_ctlcluster >/dev/null; then apt_install postgresql; fi
    if ! port_open 127.0.0.1 5432; then
        local version
        version=$(ls /etc/postgresql | sort -V | tail -n 1)
        pg_ctlcluster --skip-systemctl-redirect "$version" main start
        wait_port 127.0.0.1 5432 30
    fi
    if psql -w "postgresql://postgres@127.0.0.1:5432/test" -qc 'select 1' >/dev/null 2>&1; then
        return 0
    fi
    # A stock Debian cluster asks for a password over TCP: give postgres one for the tests.
    su postgres -c "psql -qc \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    su postgres -c "psql -lqt" | cut -d'|' -f1 | grep -qw test || su postgres -c "createdb test"
    export DIALER_TEST_DATABASE_URL="postgresql://postgres:postgres@127.0.0.1:5432/test"
}

ensure_rabbitmq() {
    if [ -n "${DIALER_TEST_AMQP_URL:-}" ] || port_open 127.0.0.1 5672; then return 0; fi
    command -v rabbitmq-server >/dev/null || apt_install rabbitmq-server
    rabbitmq-server -detached
    wait_port 127.0.0.1 5672 90 || { echo "RabbitMQ did not start" >&2; return 1; }
}

# A Python that may install packages: the active venv, the interpreter on PATH
# when it is not Debian's externally managed one, else a project .venv.
ensure_python_env() {
    if [ -n "${VIRTUAL_ENV:-}" ]; then echo python; return 0; fi
    local marker
    marker=$(python3 -c 'import sysconfig, os; print(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))')
    if [ ! -e "$marker" ]; then echo python3; return 0; fi
    if [ ! -x .venv/bin/python ]; then
        python3 -m venv .venv >&2 || { apt_install python3-venv >&2 && python3 -m venv .venv >&2; }
    fi
    echo .venv/bin/python
}
