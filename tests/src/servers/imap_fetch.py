# The mailbox thief (scenario 1 of issue 11, the Guernsey breach): logs in with a user's
# password and FETCHes every message of every folder, as an intruder's script with
# Python's imaplib would. Counts every byte it reads off the socket (and writes to it).
#
#   python3 -I -c SCRIPT HOST PORT USER PASSWORD SOURCE_IP
#
# Prints, one per line: received N, before_login N (what it had received when it sent
# LOGIN: the login process's part), sent N, sent_to_login N (what it had sent when LOGIN
# was out: the login process read that), folders N, messages N, octets N (the messages'
# own bytes inside the FETCH responses).

import imaplib
import io
import re
import signal
import socket
import sys

host, port, user, password, source = sys.argv[1:6]
# Bounded: never outlives the test that waits for its lines.
signal.alarm(90)


class CountingReader(io.RawIOBase):
    """The socket's reads, counted where they happen: every byte the server sent."""

    def __init__(self, sock):
        self.sock = sock
        self.count = 0

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.sock.recv_into(buffer)
        self.count += n
        return n


class Thief(imaplib.IMAP4):
    """imaplib has no source address: the connection is made from SOURCE_IP."""

    sent = 0
    before_login = None
    sent_to_login = None

    def _create_socket(self, timeout):
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(source, 0)
        )

    def open(self, host="", port=imaplib.IMAP4_PORT, timeout=None):
        super().open(host, port, timeout)
        self.reader = CountingReader(self.sock)
        self.file = io.BufferedReader(self.reader, 65536)

    def send(self, data):
        login = data.split(b" ")[1:2] == [b"LOGIN"]
        if login:
            # The server has answered everything asked so far and sends nothing unasked:
            # all it sent before this command is in the count.
            self.before_login = self.reader.count
        self.sent += len(data)
        if login:
            self.sent_to_login = self.sent
        super().send(data)

    def shutdown(self):
        # Whatever the server sends until it closes is received too.
        while self.file.read1(65536):
            pass
        super().shutdown()


LIST_LINE = re.compile(rb'\((?P<flags>[^)]*)\) (?P<delim>"[^"]*"|NIL) (?P<name>.+)')

m = Thief(host, int(port), timeout=30)
m.login(user, password)
typ, listed = m.list()
assert typ == "OK", listed
folders = []
for line in listed:
    name = LIST_LINE.match(line).group("name").decode()
    folders.append(name.strip('"'))

messages = octets = 0
for folder in folders:
    typ, data = m.select('"%s"' % folder, readonly=True)
    assert typ == "OK", data
    count = int(data[0])
    # In chunks, as a careful thief does (and imaplib holds one response in memory).
    for first in range(1, count + 1, 100):
        last = min(first + 99, count)
        typ, data = m.fetch("%d:%d" % (first, last), "(BODY.PEEK[])")
        assert typ == "OK", data
        for item in data:
            if isinstance(item, tuple):
                messages += 1
                octets += len(item[1])
m.logout()

print("received", m.reader.count)
print("before_login", m.before_login)
print("sent", m.sent)
print("sent_to_login", m.sent_to_login)
print("folders", len(folders))
print("messages", messages)
print("octets", octets)
