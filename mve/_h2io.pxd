# What both native HTTP/2 modules (mve/_h2transport.pyx, mve/_h2client.pyx) do the same way, as inline
# functions compiled into each: a connection's write buffer, filled from its nghttp2 session and
# written to its socket in as few send() calls as the socket takes, the monotonic clock, and the
# inline mode's deadline timer.

from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int64_t, uint8_t
from libc.stdlib cimport realloc
from libc.string cimport memcpy, memset
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from mve._h2lib cimport *


# Bytes nghttp2_session_mem_send gave that the socket has not taken yet: data[off:len].
cdef struct WriteBuffer:
    uint8_t* data
    size_t len
    size_t off
    size_t cap


cdef enum:
    WRITE_DONE = 0              # all written, or the rest waits for the socket (write_pending)
    WRITE_SESSION_ERROR = 1     # nghttp2 failed: its error code is in `session_error`
    WRITE_NO_MEMORY = 2
    WRITE_SOCKET_ERROR = 3      # send() failed: errno says why


cdef inline int64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline bint write_pending(const WriteBuffer* wb) noexcept nogil:
    return wb.off < wb.len


cdef inline int write_session(nghttp2_session* session, WriteBuffer* wb, int fd, size_t high_water,
                              ssize_t* session_error) noexcept nogil:
    """Gather what `session` has to send into `wb` (until `high_water` bytes wait) and send() it;
    again while the socket takes everything. WRITE_DONE, or why not."""
    cdef const uint8_t* data
    cdef ssize_t n
    cdef size_t need, cap
    cdef uint8_t* grown
    while True:
        while wb.len - wb.off < high_water:
            n = nghttp2_session_mem_send(session, &data)
            if n < 0:
                session_error[0] = n
                return WRITE_SESSION_ERROR
            if n == 0:
                break
            need = wb.len + <size_t>n
            if need > wb.cap:
                cap = wb.cap * 2 if wb.cap else 16384
                while cap < need:
                    cap *= 2
                grown = <uint8_t*>realloc(wb.data, cap)
                if grown == NULL:
                    return WRITE_NO_MEMORY
                wb.data = grown
                wb.cap = cap
            memcpy(wb.data + wb.len, data, <size_t>n)
            wb.len = need
        if wb.len == wb.off:
            return WRITE_DONE
        n = send(fd, wb.data + wb.off, wb.len - wb.off, MSG_NOSIGNAL)
        if n < 0:
            if errno == EINTR:
                continue
            return WRITE_SOCKET_ERROR if errno != EAGAIN else WRITE_DONE
        wb.off += <size_t>n
        if wb.off < wb.len:
            return WRITE_DONE
        wb.off = wb.len = 0


cdef inline bint append_pointer(void*** items, int* n, int* cap, void* item) noexcept nogil:
    """Append `item` to a growable array of pointers (a loop turn's dirty connections); False
    without memory (the item is then left out)."""
    cdef void** grown
    if n[0] == cap[0]:
        grown = <void**>realloc(items[0], (cap[0] * 2 + 16) * sizeof(void*))
        if grown == NULL:
            return False
        items[0] = grown
        cap[0] = cap[0] * 2 + 16
    items[0][n[0]] = item
    n[0] += 1
    return True


cdef inline void arm_timer_at(int timer_fd, int64_t* armed_ns, int64_t at_ns) noexcept nogil:
    """Inline mode: arm `timer_fd` (a CLOCK_MONOTONIC timerfd in the loop's epoll set, so the caller's
    event loop sees it) for `at_ns`, unless it is already armed for then or earlier. A deadline that
    goes away early leaves the timer armed, and its early fire re-arms it: one extra turn per
    deadline period, not a syscall per call. `armed_ns` is 0 when not armed (reset it on a fire)."""
    cdef itimerspec spec
    if armed_ns[0] != 0 and armed_ns[0] <= at_ns:
        return
    memset(&spec, 0, sizeof(spec))
    spec.it_value.tv_sec = at_ns // 1000000000
    spec.it_value.tv_nsec = at_ns % 1000000000
    if spec.it_value.tv_sec == 0 and spec.it_value.tv_nsec == 0:
        spec.it_value.tv_nsec = 1       # 0 would disarm it
    if timerfd_settime(timer_fd, TFD_TIMER_ABSTIME, &spec, NULL) == 0:
        armed_ns[0] = at_ns
