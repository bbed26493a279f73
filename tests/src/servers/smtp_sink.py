# The MX of the outside world that Postfix relays to (issue 11's normal day): accepts every
# message, keeps none, and counts every byte on its sockets. Python 3.12 dropped smtpd, so
# this is the few lines of RFC 5321 a relaying client needs.
#
#   python3 -I -c SCRIPT IP PORT
#
# Prints `listening` once it accepts connections. On a line on stdin, waits (at most 15 s)
# for its open connections to end (Postfix caches an idle one for a couple of seconds, then
# sends QUIT), then prints, one per line: received N, sent N (every byte read off and
# written to its sockets), connections N, messages N, data N (the messages' bytes between
# DATA and the final dot, as sent: CRLF line ends, dot-stuffed), and exits.

import signal
import socketserver
import sys
import threading
import time

ip, port = sys.argv[1], int(sys.argv[2])
# Bounded: never outlives the test that waits for its lines.
signal.alarm(600)

lock = threading.Lock()
totals = {"received": 0, "sent": 0, "connections": 0, "messages": 0, "data": 0}
open_connections = 0


class Session(socketserver.StreamRequestHandler):
    def reply(self, line):
        data = line.encode() + b"\r\n"
        self.wfile.write(data)
        with lock:
            totals["sent"] += len(data)

    def line(self):
        data = self.rfile.readline(1 << 20)
        with lock:
            totals["received"] += len(data)
        return data

    def handle(self):
        global open_connections
        with lock:
            totals["connections"] += 1
            open_connections += 1
        try:
            self.session()
        finally:
            # What the client sent that no command read (nothing, from a well-behaved one).
            self.connection.settimeout(1)
            try:
                while True:
                    rest = self.connection.recv(65536)
                    if not rest:
                        break
                    with lock:
                        totals["received"] += len(rest)
            except OSError:
                pass
            with lock:
                open_connections -= 1

    def session(self):
        self.reply("220 mx.partner.example ESMTP")
        while True:
            line = self.line()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.reply("250-mx.partner.example")
                self.reply("250-PIPELINING")
                self.reply("250-SIZE 52428800")
                self.reply("250 8BITMIME")
            elif verb == b"HELO":
                self.reply("250 mx.partner.example")
            elif verb in (b"MAIL", b"RCPT", b"RSET", b"NOOP"):
                self.reply("250 2.1.0 Ok")
            elif verb == b"DATA":
                self.reply("354 End data with <CR><LF>.<CR><LF>")
                size = 0
                while True:
                    data = self.line()
                    if not data:
                        return
                    if data == b".\r\n":
                        break
                    size += len(data)
                with lock:
                    totals["messages"] += 1
                    totals["data"] += size
                self.reply("250 2.0.0 Ok: queued")
            elif verb == b"QUIT":
                self.reply("221 2.0.0 Bye")
                return
            else:
                self.reply("502 5.5.2 Error: command not recognized")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


server = Server((ip, port), Session)
threading.Thread(target=server.serve_forever, daemon=True).start()
print("listening", flush=True)
sys.stdin.readline()
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    with lock:
        if open_connections == 0:
            break
    time.sleep(0.05)
server.shutdown()
with lock:
    if open_connections:
        print("open", open_connections, flush=True)
    for key in ("received", "sent", "connections", "messages", "data"):
        print(key, totals[key], flush=True)
