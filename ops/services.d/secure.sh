# ops/services.d/secure.sh - sourced by ops/services: the opt-in TLS and
# SASL of the local services (--pg-ssl, --sasl; docs/security.md). Uses
# ops/services' variables and helpers (say, die, need_cmd, log_tail,
# kafka_java).

# option_set NAME VALUE: remember an opt-in (1) or drop it (0); "" keeps it.
option_set() {
    case $2 in
        1) touch "$TALLY_LOCAL/.opt-$1" ;;
        0) rm -f "$TALLY_LOCAL/.opt-$1" ;;
    esac
}
option_on() { [ -f "$TALLY_LOCAL/.opt-$1" ]; }

# A throwaway CA and one server certificate (127.0.0.1, localhost) for the
# broker's SASL_SSL listener and PostgreSQL; made once, kept in $TLS_DIR.
tls_make() {
    [ -s "$TLS_DIR/server.pem" ] && [ -s "$TLS_DIR/broker.p12" ] && return 0
    need_cmd openssl openssl
    mkdir -p "$TLS_DIR"
    chmod 700 "$TLS_DIR"
    say "tls: making a throwaway CA and a server certificate in $TLS_DIR"
    (
        cd "$TLS_DIR"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3650 \
            -subj "/CN=tally local test CA" \
            -addext "basicConstraints=critical,CA:TRUE" \
            -addext "keyUsage=critical,keyCertSign,cRLSign"
        openssl req -newkey rsa:2048 -nodes -keyout server.key -out server.csr -subj "/CN=localhost"
        printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
            -out server.pem -days 3650 -extfile server.ext
        head -c 18 /dev/urandom | base64 | tr '+/' '-_' >keystore-password
        openssl pkcs12 -export -in server.pem -inkey server.key -certfile ca.pem \
            -name broker -out broker.p12 -passout "file:keystore-password"
        rm -f server.csr server.ext
        chmod 600 ./*.key keystore-password broker.p12
        chmod 644 ca.pem server.pem
    ) >"$TALLY_LOCAL/tls.log" 2>&1 || { log_tail "$TALLY_LOCAL/tls.log"; die "tls: openssl failed; see $TALLY_LOCAL/tls.log"; }
    chmod 755 "$TLS_DIR" # ca.pem and server.pem are public; the keys stay 0600
}

# --sasl on a node formatted without it: the SCRAM user through the admin
# API of the running broker (PLAINTEXT listener), once.
kafka_scram_user() {
    option_on kafka-sasl || return 0
    [ -f "$KAFKA_DIR/scram-user" ] && return 0
    say "kafka: adding the SCRAM-SHA-512 user $KAFKA_SASL_USER"
    kafka_java org.apache.kafka.tools.ConfigCommand --bootstrap-server "$KAFKA_BROKERS" \
        --alter --entity-type users --entity-name "$KAFKA_SASL_USER" \
        --add-config "SCRAM-SHA-512=[password=$(cat "$KAFKA_DIR/sasl-password")]" >>"$KAFKA_LOG" 2>&1 \
        || { log_tail "$KAFKA_LOG"; die "kafka: adding the SCRAM user failed; see $KAFKA_LOG"; }
    touch "$KAFKA_DIR/scram-user"
}

# kafka_sasl_configure PROPS: add the SASL_SSL listener to the broker's
# properties; the password is made once and kept. SCRAM-SHA-512 (the user
# made at format time) for clients that can: librdkafka before 2.6.1 (Debian
# 12 has 2.0.2, kcat uses it) computes a SCRAM proof Kafka 4.x rejects
# (librdkafka#4895), so the same user and password also work with PLAIN,
# over the same TLS.
kafka_sasl_configure() {
    local props=$1
    tls_make
    if [ ! -s "$KAFKA_DIR/sasl-password" ]; then
        (umask 077; head -c 16 /dev/urandom | od -An -tx1 | tr -d " \n" >"$KAFKA_DIR/sasl-password")
    fi
    sed -i -e "s|^listeners=.*|&,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT|" \
        -e "s|^advertised.listeners=.*|&,SASL_SSL://127.0.0.1:$KAFKA_SASL_PORT|" \
        -e "s|^listener.security.protocol.map=.*|&,SASL_SSL:SASL_SSL|" "$props"
    cat >>"$props" <<EOF

# --sasl (written by ops/services): SCRAM-SHA-512 and PLAIN over TLS on $KAFKA_SASL_PORT
sasl.enabled.mechanisms=SCRAM-SHA-512,PLAIN
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.plain.sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required user_$KAFKA_SASL_USER="$(cat "$KAFKA_DIR/sasl-password")";
listener.name.sasl_ssl.ssl.keystore.type=PKCS12
listener.name.sasl_ssl.ssl.keystore.location=$TLS_DIR/broker.p12
listener.name.sasl_ssl.ssl.keystore.password=$(cat "$TLS_DIR/keystore-password")
EOF
    chmod 600 "$props"
}

# The mechanism tally's librdkafka (the one CMake links: ops/install-deps
# builds it into $TALLY_RDKAFKA_PREFIX) can use with this broker (see above).
kafka_sasl_mechanism() {
    local v prefix=${TALLY_RDKAFKA_PREFIX:-/opt/tally-deps/librdkafka-2.12.1}
    v=$(PKG_CONFIG_PATH="$prefix/lib/pkgconfig:${PKG_CONFIG_PATH:-}" pkg-config --modversion rdkafka 2>/dev/null || echo 0)
    if printf '2.6.1\n%s\n' "$v" | sort -V -C; then echo SCRAM-SHA-512; else echo PLAIN; fi
}

# write_secure_env ENVFILE: what --pg-ssl and --sasl clients need: test
# variables appended to ENVFILE, kafka-sasl.env (0600) and tally-sasl.cfg.
write_secure_env() {
    local envfile=$1
    # Connections that do not ask for TLS stay plaintext (libpq would
    # prefer TLS): some suites share a connection across fork(), which a
    # TLS session cannot survive. URLs with sslmode=verify-full still win.
    option_on pg-ssl && cat >>"$envfile" <<EOF
# --pg-ssl: the CA that signed PostgreSQL's certificate
export TALLY_TEST_PG_CA='$TLS_DIR/ca.pem'
export PGSSLMODE=disable
EOF
    if option_on kafka-sasl; then
        cat >>"$envfile" <<EOF
# --sasl: the broker's SASL_SSL listener (for tests; programs: kafka-sasl.env)
export TALLY_TEST_KAFKA_SASL_BROKERS='127.0.0.1:$KAFKA_SASL_PORT'
export TALLY_TEST_KAFKA_SASL_USER='$KAFKA_SASL_USER'
export TALLY_TEST_KAFKA_SASL_MECHANISM='$(kafka_sasl_mechanism)'
export TALLY_TEST_KAFKA_SASL_PASSWORD='$(cat "$KAFKA_DIR/sasl-password")'
export TALLY_TEST_KAFKA_CA='$TLS_DIR/ca.pem'
EOF
        (umask 077; cat >"$TALLY_LOCAL/kafka-sasl.env" <<EOF
# written by ops/services up --sasl; with --config $TALLY_LOCAL/tally-sasl.cfg
export KAFKA_BROKERS='127.0.0.1:$KAFKA_SASL_PORT'
export KAFKA_SASL_PASSWORD='$(cat "$KAFKA_DIR/sasl-password")'
EOF
        )
        cat >"$TALLY_LOCAL/tally-sasl.cfg" <<EOF
# written by ops/services up --sasl; the password: . $TALLY_LOCAL/kafka-sasl.env
database: { url = "$DATABASE_URL"; };
kafka: {
  brokers = "127.0.0.1:$KAFKA_SASL_PORT";
  properties = ( ("security.protocol", "SASL_SSL"),
                 ("sasl.mechanism", "$(kafka_sasl_mechanism)"),
                 ("sasl.username", "$KAFKA_SASL_USER"),
                 ("ssl.ca.location", "$TLS_DIR/ca.pem") );
};
stripe: { api_base = "$STRIPE_API_BASE"; };
EOF
    else
        rm -f "$TALLY_LOCAL/kafka-sasl.env" "$TALLY_LOCAL/tally-sasl.cfg"
    fi
}
