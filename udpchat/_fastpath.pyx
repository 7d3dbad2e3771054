# cython: language_level=3, boundscheck=False, wraparound=False
"""The compiled twin of ``udpchat.fastpath``'s pure-Python loops: same inputs, same results.

Clean seed text is ``NAME: pesan ke-N`` with a NAME of 1-32 of ``A-Z a-z 0-9 . _ -`` and an N
of 1-18 digits without a leading zero, exactly what ``wire.match_clean_seed`` matches.
"""

from libc.string cimport memcmp

cdef enum:
    MAX_NAME = 32
    SEPARATOR_LENGTH = 11
    MAX_DIGITS = 18

cdef const char *SEPARATOR = b": pesan ke-"


cdef inline bint is_name_byte(unsigned char byte) noexcept:
    return (
        (c'a' <= byte <= c'z') or (c'A' <= byte <= c'Z') or (c'0' <= byte <= c'9')
        or byte == c'.' or byte == c'_' or byte == c'-'
    )


cdef object clean_seed(bytes data):
    cdef const unsigned char *text = data
    cdef Py_ssize_t size = len(data)
    cdef Py_ssize_t position = 0
    cdef Py_ssize_t name_end
    cdef unsigned long long counter = 0
    cdef unsigned char byte
    while position < size and position <= MAX_NAME and is_name_byte(text[position]):
        position += 1
    if position == 0 or position > MAX_NAME:
        return None
    name_end = position
    if size - position <= SEPARATOR_LENGTH or size - position > SEPARATOR_LENGTH + MAX_DIGITS:
        return None
    if memcmp(text + position, SEPARATOR, SEPARATOR_LENGTH) != 0:
        return None
    position += SEPARATOR_LENGTH
    if not (c'1' <= text[position] <= c'9'):
        return None
    while position < size:
        byte = text[position]
        if not (c'0' <= byte <= c'9'):
            return None
        counter = counter * 10 + (byte - c'0')
        position += 1
    return (data[:name_end], counter)


def clean_seeds(list datagrams):
    cdef list seeds = []
    cdef list others = []
    cdef Py_ssize_t index
    cdef object fields
    for index in range(len(datagrams)):
        fields = clean_seed(<bytes>(<tuple>datagrams[index])[0])
        seeds.append(fields)
        if fields is None:
            others.append(index)
    return seeds, others


def text_lines(list datagrams, list senders, dict texts, dict prefixes, format_other):
    cdef list parts = []
    cdef Py_ssize_t index
    cdef object text, ip, prefix
    if len(datagrams) != len(senders):
        raise ValueError("datagrams and senders differ in length")
    for index in range(len(datagrams)):
        ip = (<tuple>senders[index])[0]
        text = texts.get(index) if texts else None
        if text is not None:
            parts.append(format_other(ip, text))
            continue
        prefix = prefixes.get(ip)
        if prefix is None:
            prefix = f"[{ip}] ".encode()
            prefixes[ip] = prefix
        parts.append(prefix)
        parts.append((<tuple>datagrams[index])[0])
        parts.append(b"\n")
    return b"".join(parts)


def account_next(dict senders, record, list addresses, list seeds, double arrival,
                 double jitter_spacing_s, new):
    cdef list verdicts = []
    cdef Py_ssize_t index
    cdef object seed, key, sequence, counter
    if len(addresses) != len(seeds):
        raise ValueError("addresses and seeds differ in length")
    for index in range(len(addresses)):
        seed = seeds[index]
        if seed is None:
            verdicts.append(None)
            continue
        counter = (<tuple>seed)[1]
        key = (addresses[index], (<tuple>seed)[0])
        sequence = senders.get(key)
        if sequence is None or counter != sequence.highest + 1:
            verdicts.append(record(key, counter, arrival))
            continue
        sequence.highest = counter
        sequence.received += 1
        if arrival - sequence.last_arrival >= jitter_spacing_s:
            sequence.sample_jitter(counter, arrival)
        verdicts.append(new)
    return verdicts
