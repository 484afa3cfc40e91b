"""ops/chaos.d/cluster.py - what the chaos harness runs against: the local
services of ops/services (restartable), a database and topics of the run's
own, and the tally programs as child processes it can kill and restart."""
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from urllib.parse import urlsplit, urlunsplit

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def say(msg):
    print("ops/chaos: " + msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def read_env(path):
    """The exports of ops/services' env file as a dict."""
    env = {}
    for line in open(path):
        line = line.strip()
        if not line.startswith("export ") or "=" not in line:
            continue
        k, v = line[len("export "):].split("=", 1)
        env[k] = v.strip("'\"")
    return env


class Services:
    """The PostgreSQL and Kafka of ops/services under TALLY_LOCAL."""

    def __init__(self, local, log):
        self.local = local
        self.log = log
        self.env = read_env(os.path.join(local, "env"))
        self.dsn = self.env["DATABASE_URL"]
        self.brokers = self.env["KAFKA_BROKERS"]
        u = urlsplit(self.dsn)
        self.pg_host, self.pg_port = u.hostname, u.port
        kport = int(self.brokers.rsplit(":", 1)[1])
        # ops/services takes its ports from the environment: the same ones
        self.svc_env = dict(os.environ, TALLY_LOCAL=local,
                            TALLY_PG_PORT=str(self.pg_port),
                            TALLY_KAFKA_PORT=str(kport))
        self.svc_env.setdefault("TALLY_KAFKA_CONTROLLER_PORT", str(kport + 1))
        sb = self.env.get("STRIPE_API_BASE")
        if sb:
            self.svc_env.setdefault("TALLY_STRIPE_PORT", str(urlsplit(sb).port))
        self.restarts = {"kafka": 0, "pg": 0}

    def db_url(self, db, host=None, port=None, extra=""):
        u = urlsplit(self.dsn)
        netloc = u.netloc
        if port is not None:
            userinfo = netloc.rsplit("@", 1)[0] + "@" if "@" in netloc else ""
            netloc = "%s%s:%d" % (userinfo, host or "127.0.0.1", port)
        q = u.query
        if extra:
            q = (q + "&" if q else "") + extra
        return urlunsplit((u.scheme, netloc, "/" + db, q, ""))

    def psql(self, sql, db=None, check=True):
        url = self.db_url(db) if db else self.dsn
        r = subprocess.run(["psql", "-X", "-qAt", "-F", "\t", "-v", "ON_ERROR_STOP=1",
                            url, "-c", sql], capture_output=True, text=True)
        if check and r.returncode != 0:
            raise RuntimeError("psql failed: %s\n%s" % (sql[:200], r.stderr))
        return r.stdout

    def delete_topics(self, prefix):
        """The run's topics (prefix.*), with Kafka's TopicCommand from the
        broker's jars (kcat cannot delete)."""
        libs = os.path.join(self.local, "kafka", "libs")
        subprocess.run(["java", "-Xmx128m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC",
                        "-cp", libs + "/*", "-Dlog4j2.configurationFile=" +
                        os.path.join(REPO, "ops/kafka/log4j2-tools.xml"),
                        "org.apache.kafka.tools.TopicCommand", "--bootstrap-server",
                        self.brokers, "--delete", "--topic", prefix.replace(".", "\\.") + "\\..*"],
                       stdout=self.log, stderr=self.log)

    def restart(self, what):
        """ops/services restart pg|kafka (PostgreSQL: fast shutdown)."""
        t0 = time.time()
        r = subprocess.run(["bash", os.path.join(REPO, "ops/services"), "restart", what],
                           env=self.svc_env, stdout=self.log, stderr=self.log)
        if r.returncode != 0:
            raise RuntimeError("ops/services restart %s failed" % what)
        self.restarts[what] += 1
        return time.time() - t0


class Program:
    """One tally program instance: started, killed, restarted."""

    def __init__(self, name, argv, env, logdir):
        self.name = name
        self.argv = argv
        self.env = env
        self.logpath = os.path.join(logdir, name + ".log")
        self.proc = None
        self.starts = 0

    def start(self):
        logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=logf,
                                     stderr=logf, stdin=subprocess.DEVNULL)
        logf.close()
        self.starts += 1

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill9(self):
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
            return True
        return False

    def stop(self, timeout=20):
        if not self.alive():
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class Killer(threading.Thread):
    """Every kill_min..kill_max seconds: SIGKILL one random victim, start it
    again after a short pause. Also restarts any victim that died alone."""

    def __init__(self, victims, kill_min, kill_max, rng):
        super().__init__(daemon=True)
        self.victims = victims
        self.kill_min, self.kill_max = kill_min, kill_max
        self.rng = rng
        self.kills = 0
        self.by_name = {}
        self.crashes = 0
        self.paused = threading.Event()
        self.halt = threading.Event()
        self.lock = threading.Lock()

    def run(self):
        while not self.halt.wait(self.rng.uniform(self.kill_min, self.kill_max)):
            if self.paused.is_set():
                self.revive()
                continue
            with self.lock:
                v = self.rng.choice(self.victims)
                if v.kill9():
                    self.kills += 1
                    self.by_name[v.name] = self.by_name.get(v.name, 0) + 1
            time.sleep(self.rng.uniform(0.2, 1.5))
            with self.lock:
                if not v.alive():
                    v.start()
            self.revive()

    def revive(self):
        """A program that exited by itself (not killed here) is restarted
        too, and counted: the table shows it."""
        with self.lock:
            for v in self.victims:
                if v.proc is not None and not v.alive():
                    self.crashes += 1
                    v.start()

    def stop(self):
        self.halt.set()
        self.join()


def make_rng(seed):
    return random.Random(seed)
