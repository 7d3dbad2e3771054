# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of ``udpchat.fastpath``'s pure-Python loops (same inputs, same results),
and on Linux the batch reader, which has no twin: where it is missing, the event loop's own
datagram transport reads the socket one datagram at a time.

Clean seed text is ``NAME: pesan ke-N`` exactly as ``wire.match_clean_seed`` matches it; the
grammar's constants are read from :mod:`udpchat.wire` when this module is imported, so they are
written in one place. Every argument is checked: a wrong type raises ``TypeError``.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_Check, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from cpython.ref cimport PyObject, Py_INCREF, Py_XDECREF
from cpython.tuple cimport PyTuple_Check, PyTuple_GET_ITEM, PyTuple_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno
from libc.string cimport memcmp, memcpy, strerror

from udpchat import wire

cdef bytes SEPARATOR_BYTES = wire.MESSAGE_SEPARATOR.encode("ascii")
cdef const char *SEPARATOR = SEPARATOR_BYTES
cdef Py_ssize_t SEPARATOR_LENGTH = len(SEPARATOR_BYTES)
cdef Py_ssize_t MAX_NAME = wire.MAX_USERNAME_LENGTH
cdef Py_ssize_t MAX_DIGITS = wire.CLEAN_COUNTER_DIGITS
cdef bint NAME_BYTE[256]
for _byte in wire.NAME_CHARACTERS.encode("ascii"):
    NAME_BYTE[_byte] = True


cdef inline object item(object entry, Py_ssize_t index, str what):
    """``entry[index]`` of a tuple, or TypeError saying what was expected."""
    if not PyTuple_Check(entry) or PyTuple_GET_SIZE(entry) <= index:
        raise TypeError(f"{what} must be a tuple of {index + 1} or more, not {type(entry).__name__}")
    return <object>PyTuple_GET_ITEM(entry, index)


cdef Py_ssize_t clean_name_length(object data, unsigned long long *counter) except -2:
    """The length of the name in clean seed text, its counter in ``counter``; -1 when
    ``data`` is not clean seed text."""
    cdef const unsigned char *text
    cdef Py_ssize_t size, position = 0, name_end
    cdef unsigned long long value = 0
    cdef unsigned char byte
    if not PyBytes_Check(data):
        raise TypeError(f"a datagram must be bytes, not {type(data).__name__}")
    text = <const unsigned char *>PyBytes_AS_STRING(data)
    size = PyBytes_GET_SIZE(data)
    while position < size and position <= MAX_NAME and NAME_BYTE[text[position]]:
        position += 1
    if position == 0 or position > MAX_NAME:
        return -1
    name_end = position
    if size - position <= SEPARATOR_LENGTH or size - position > SEPARATOR_LENGTH + MAX_DIGITS:
        return -1
    if memcmp(text + position, SEPARATOR, SEPARATOR_LENGTH) != 0:
        return -1
    position += SEPARATOR_LENGTH
    if not (c'1' <= text[position] <= c'9'):
        return -1
    while position < size:
        byte = text[position]
        if not (c'0' <= byte <= c'9'):
            return -1
        value = value * 10 + (byte - c'0')
        position += 1
    counter[0] = value
    return name_end


def clean_seeds(list datagrams not None):
    cdef list seeds = []
    cdef list others = []
    cdef Py_ssize_t index, name_length
    cdef unsigned long long counter = 0
    cdef object data, name = None
    for index in range(len(datagrams)):
        data = item(datagrams[index], 0, "a datagram entry")
        name_length = clean_name_length(data, &counter)
        if name_length < 0:
            seeds.append(None)
            others.append(index)
            continue
        # A sender's datagrams come in runs: the run shares one name object (and its hash).
        if name is None or PyBytes_GET_SIZE(name) != name_length or memcmp(
            PyBytes_AS_STRING(name), PyBytes_AS_STRING(data), name_length
        ) != 0:
            name = PyBytes_FromStringAndSize(PyBytes_AS_STRING(data), name_length)
        seeds.append((name, counter))
    return seeds, others


def text_lines(list datagrams not None, list senders not None, dict texts not None,
               dict prefixes not None, format_other):
    cdef list pieces = []
    cdef Py_ssize_t index, total = 0, size, count
    cdef object text, ip, prefix = None, data, last_ip = None, line
    cdef bytes lines
    cdef char *out
    if len(datagrams) != len(senders):
        raise ValueError("datagrams and senders differ in length")
    # First each line's pieces and the total size: a prefix and the datagram for clean seed
    # text, the whole line (in a 1-tuple) for the others...
    for index in range(len(datagrams)):
        ip = item(senders[index], 0, "a sender")
        data = item(datagrams[index], 0, "a datagram entry")
        text = texts.get(index) if texts else None
        if text is not None:
            line = format_other(ip, text)
            if not PyBytes_Check(line):
                raise TypeError(f"a formatted line must be bytes, not {type(line).__name__}")
            pieces.append((line,))
            total += PyBytes_GET_SIZE(line)
            continue
        if not PyBytes_Check(data):
            raise TypeError(f"a datagram must be bytes, not {type(data).__name__}")
        if ip is not last_ip:  # a sender's datagrams come in runs
            prefix = prefixes.get(ip)
            if prefix is None:
                prefix = f"[{ip}] ".encode()
                prefixes[ip] = prefix
            last_ip = ip
        pieces.append(prefix)
        pieces.append(data)
        total += PyBytes_GET_SIZE(prefix) + PyBytes_GET_SIZE(data) + 1
    # ...then one bytes object, copied into once (from the pieces alone: they cannot change).
    lines = PyBytes_FromStringAndSize(NULL, total)
    out = PyBytes_AS_STRING(lines)
    index, count = 0, len(pieces)
    while index < count:
        line = pieces[index]
        if PyTuple_Check(line):
            line = (<tuple>line)[0]
            size = PyBytes_GET_SIZE(line)
            memcpy(out, PyBytes_AS_STRING(line), size)
            out += size
            index += 1
            continue
        size = PyBytes_GET_SIZE(line)
        memcpy(out, PyBytes_AS_STRING(line), size)
        out += size
        data = pieces[index + 1]
        size = PyBytes_GET_SIZE(data)
        memcpy(out, PyBytes_AS_STRING(data), size)
        out += size
        out[0] = 10  # the newline
        out += 1
        index += 2
    return lines


def account_next(dict senders not None, record, list addresses not None, list seeds not None,
                 double arrival, double jitter_spacing_s, new):
    cdef list verdicts = []
    cdef Py_ssize_t index
    cdef object seed, key, sequence, counter, address, name
    cdef object last_address = None, last_name = None, last_sequence = None
    if len(addresses) != len(seeds):
        raise ValueError("addresses and seeds differ in length")
    for index in range(len(addresses)):
        seed = seeds[index]
        if seed is None:
            verdicts.append(None)
            continue
        counter = item(seed, 1, "a seed")
        name = item(seed, 0, "a seed")
        address = addresses[index]
        # A run of one sender's datagrams (the same address and name objects) finds its
        # sequence once; record() may evict or replace sequences, so it ends the run.
        if address is last_address and name is last_name:
            sequence = last_sequence
        else:
            key = (address, name)
            sequence = senders.get(key)
        if sequence is None or counter != sequence.highest + 1:
            last_address = None
            verdicts.append(record((address, name), counter, arrival))
            continue
        last_address, last_name, last_sequence = address, name, sequence
        sequence.highest = counter
        sequence.received += 1
        if arrival - sequence.last_arrival >= jitter_spacing_s:
            sequence.sample_jitter(counter, arrival)
        verdicts.append(new)
    return verdicts


# The batch reader: recvmmsg on Linux; elsewhere HAVE_RECVMMSG is False and nothing uses it.

cdef extern from *:
    """
    #include <sys/socket.h>
    #include <netinet/in.h>
    #include <arpa/inet.h>
    #ifdef __linux__
    #define UDPCHAT_RECVMMSG 1
    static int udpchat_recvmmsg(int fd, struct mmsghdr *messages, unsigned int count) {
        return recvmmsg(fd, messages, count, MSG_DONTWAIT | MSG_TRUNC, NULL);
    }
    #else
    #define UDPCHAT_RECVMMSG 0
    struct mmsghdr { struct msghdr msg_hdr; unsigned int msg_len; };
    static int udpchat_recvmmsg(int fd, struct mmsghdr *messages, unsigned int count) {
        errno = ENOSYS;
        return -1;
    }
    #endif
    """
    int UDPCHAT_RECVMMSG
    ctypedef unsigned int socklen_t
    struct iovec:
        void *iov_base
        size_t iov_len
    struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct sockaddr_storage:
        unsigned short ss_family
    struct in_addr:
        pass
    struct in6_addr:
        pass
    struct sockaddr_in:
        unsigned short sin_port
        in_addr sin_addr
    struct sockaddr_in6:
        unsigned short sin6_port
        unsigned int sin6_flowinfo
        in6_addr sin6_addr
        unsigned int sin6_scope_id
    int AF_INET, AF_INET6
    int udpchat_recvmmsg(int fd, mmsghdr *messages, unsigned int count) nogil
    const char *inet_ntop(int family, const void *source, char *text, socklen_t size)
    unsigned short ntohs(unsigned short)
    unsigned int ntohl(unsigned int)

HAVE_RECVMMSG = bool(UDPCHAT_RECVMMSG)

# Source addresses remembered, each built once: a direct-mapped table, so that a flood of forged
# sources costs at worst what no table would. The key is the whole source, port included: a
# sockaddr_in6 (a sockaddr_in is shorter).
cdef enum:
    ADDRESS_SLOTS = 256
    ADDRESS_KEY_BYTES = 28
    ADDRESS_TEXT_BYTES = 64

cdef struct AddressSlot:
    unsigned char key[ADDRESS_KEY_BYTES]
    socklen_t length
    PyObject *address


cdef class DatagramReader:
    """Reads up to ``slots`` datagrams of a non-blocking socket in one ``recvmmsg``, without
    the GIL, into buffers of ``max_size`` bytes; :meth:`read` builds ``(bytes, address)`` as
    ``socket.recvfrom`` would (the address as the socket module gives it)."""

    cdef int fd
    cdef Py_ssize_t max_size, slots
    cdef char *buffers
    cdef mmsghdr *messages
    cdef iovec *vectors
    cdef sockaddr_storage *sources
    cdef AddressSlot cache[ADDRESS_SLOTS]

    def __cinit__(self, int fd, Py_ssize_t max_size, Py_ssize_t slots):
        cdef Py_ssize_t index
        if max_size < 1 or slots < 1:
            raise ValueError("max_size and slots must be at least 1")
        self.fd = fd
        self.max_size = max_size
        self.slots = slots
        self.buffers = <char *>PyMem_Calloc(slots, max_size)
        self.messages = <mmsghdr *>PyMem_Calloc(slots, sizeof(mmsghdr))
        self.vectors = <iovec *>PyMem_Calloc(slots, sizeof(iovec))
        self.sources = <sockaddr_storage *>PyMem_Calloc(slots, sizeof(sockaddr_storage))
        if not (self.buffers and self.messages and self.vectors and self.sources):
            raise MemoryError()
        for index in range(slots):
            self.vectors[index].iov_base = self.buffers + index * max_size
            self.vectors[index].iov_len = max_size
            self.messages[index].msg_hdr.msg_iov = &self.vectors[index]
            self.messages[index].msg_hdr.msg_iovlen = 1
            self.messages[index].msg_hdr.msg_name = &self.sources[index]

    def __dealloc__(self):
        cdef Py_ssize_t index
        for index in range(ADDRESS_SLOTS):
            Py_XDECREF(self.cache[index].address)
        PyMem_Free(self.buffers)
        PyMem_Free(self.messages)
        PyMem_Free(self.vectors)
        PyMem_Free(self.sources)

    cdef object address_of(self, sockaddr_storage *source, socklen_t length):
        cdef const unsigned char *key = <const unsigned char *>source
        cdef unsigned int hashed = 2166136261u  # FNV-1a
        cdef socklen_t index
        cdef AddressSlot *slot
        cdef object address
        if length > ADDRESS_KEY_BYTES:
            length = ADDRESS_KEY_BYTES
        for index in range(length):
            hashed = (hashed ^ key[index]) * 16777619u
        slot = &self.cache[(hashed ^ (hashed >> 16)) % ADDRESS_SLOTS]
        if slot.address != NULL and slot.length == length and memcmp(slot.key, key, length) == 0:
            return <object>slot.address
        address = build_address(source)
        Py_XDECREF(slot.address)
        Py_INCREF(address)
        slot.address = <PyObject *>address
        slot.length = length
        memcpy(slot.key, key, length)
        return address

    def read(self, list datagrams not None, list refused not None):
        """Append what one ``recvmmsg`` read: ``(bytes, address)`` to ``datagrams``, and
        ``(size, address)`` to ``refused`` for each that is empty or over ``max_size`` (its
        real size, though only ``max_size`` bytes were copied). Returns how many were read (0
        when none was waiting); raises OSError for the socket's errors."""
        cdef int count
        cdef Py_ssize_t index, size
        cdef object address
        for index in range(self.slots):
            self.messages[index].msg_hdr.msg_namelen = sizeof(sockaddr_storage)
        with nogil:
            count = udpchat_recvmmsg(self.fd, self.messages, <unsigned int>self.slots)
        if count < 0:
            if errno == EAGAIN or errno == EINTR:
                return 0
            raise OSError(errno, strerror(errno).decode())
        for index in range(count):
            size = self.messages[index].msg_len
            address = self.address_of(&self.sources[index], self.messages[index].msg_hdr.msg_namelen)
            if 0 < size <= self.max_size:
                data = PyBytes_FromStringAndSize(self.buffers + index * self.max_size, size)
                datagrams.append((data, address))
            else:
                refused.append((size, address))
        return count


cdef object build_address(sockaddr_storage *source):
    cdef char text[ADDRESS_TEXT_BYTES]
    cdef sockaddr_in *v4
    cdef sockaddr_in6 *v6
    if source.ss_family == AF_INET:
        v4 = <sockaddr_in *>source
        inet_ntop(AF_INET, &v4.sin_addr, text, ADDRESS_TEXT_BYTES)
        return (text.decode("ascii"), ntohs(v4.sin_port))
    if source.ss_family == AF_INET6:
        v6 = <sockaddr_in6 *>source
        inet_ntop(AF_INET6, &v6.sin6_addr, text, ADDRESS_TEXT_BYTES)
        return (
            text.decode("ascii"), ntohs(v6.sin6_port), ntohl(v6.sin6_flowinfo), v6.sin6_scope_id
        )
    raise OSError(f"a datagram from address family {source.ss_family}: only IPv4 and IPv6 are read")
