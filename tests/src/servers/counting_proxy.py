# The front door of a host of the outside world (issue 11's normal day: the backup host): it
# accepts one TCP connection and hands it to the host's real server, a command it starts
# with the connection on its stdin and stdout (as inetd or sshd would: `rsync --server
# --daemon`), counting every byte that crosses, so that what the monitored server sent is
# counted at the receiving end. The server's side is pipes: no traffic of its own.
#
#   python3 -I -c SCRIPT LISTEN_IP LISTEN_PORT COMMAND [ARG ...]
#
# Prints `listening` once it accepts connections. Once the connection has ended both ways
# and the command has exited, prints, one per line: received N (every byte read from the
# client), sent N (every byte written to the client), and exits; or prints `error …` and
# exits 1 when a socket or the command failed.

import os
import signal
import socket
import subprocess
import sys
import threading

listen_ip, listen_port, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
# Bounded: never outlives the test that waits for its lines.
signal.alarm(600)
# How long the client may stay silent.
IDLE = 120

listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
listener.bind((listen_ip, listen_port))
listener.listen(1)
print("listening", flush=True)
client, _ = listener.accept()
listener.close()
client.settimeout(IDLE)
server = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)

counts = {"received": 0, "sent": 0}
errors = []


def to_server():
    try:
        while True:
            data = client.recv(1 << 16)
            if not data:
                break
            server.stdin.write(data)
            counts["received"] += len(data)
    except OSError as e:
        errors.append(f"from the client: {e}")
    finally:
        server.stdin.close()


up = threading.Thread(target=to_server)
up.start()
try:
    while True:
        data = os.read(server.stdout.fileno(), 1 << 16)
        if not data:
            break
        client.sendall(data)
        counts["sent"] += len(data)
    client.shutdown(socket.SHUT_WR)
except OSError as e:
    errors.append(f"to the client: {e}")
up.join()
status = server.wait()
if status != 0:
    errors.append(f"{command[0]} exited with {status}")
if errors:
    print("error " + "; ".join(errors), flush=True)
    sys.exit(1)
print(f"received {counts['received']}", flush=True)
print(f"sent {counts['sent']}", flush=True)
