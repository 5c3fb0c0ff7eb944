# The C-level contract of mve/_h2transport.pyx: the server's own state structs. The libnghttp2
# and epoll/socket declarations are in mve/_h2lib.pxd.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from mve._h2io cimport WriteBuffer
from mve._h2lib cimport *


cdef struct Server
cdef struct Stream


# A path answered from C: the framed reply (5-byte gRPC prefix + message) or a gRPC error.
cdef struct Canned:
    uint8_t* path
    size_t path_len
    uint8_t* body           # gRPC-framed reply; NULL for an error answer
    size_t body_len
    char status[12]         # grpc-status as decimal text
    int status_code
    uint8_t* message        # grpc-message, already percent-encoded (NULL: none)
    size_t message_len
    uint8_t* details        # grpc-status-details-bin, already base64 (NULL: none)
    size_t details_len


# A path whose unary requests are handed to Python whole (add_unary).
cdef struct UnaryPath:
    uint8_t* path
    size_t path_len


cdef struct Conn:
    int fd
    nghttp2_session* session
    Server* server
    Conn* prev
    Conn* next
    Stream* streams         # open streams, freed with the connection
    WriteBuffer out         # bytes from nghttp2_session_mem_send not yet written
    uint32_t slot           # index in Server.slots: a stream's token names it, with the connection's serial
    uint64_t serial         # this connection's number, never reused: a token of a gone connection names no later one
    bint dirty              # has something to send: flushed once at the end of the loop turn
    bint want_out           # EPOLLOUT registered (the socket's buffer was full)
    bint dead
    int64_t handshake_deadline_ns   # closed then unless a frame came (0: a frame came, or no deadline)
    Conn* hs_prev           # the connections still in their handshake, oldest first
    Conn* hs_next


# One request stream; freed when nghttp2 closes the stream (or with its connection).
cdef struct Stream:
    int32_t id
    Conn* conn
    Stream* prev
    Stream* next
    int kind                # ROUTE_*: how the request is answered
    const Canned* route     # ROUTE_CANNED: the answer
    int method              # ROUTE_UNARY: the index of its path in add_unary's order
    uint64_t token          # names the stream to Python (with its connection's serial): slot << 31 | stream id
    size_t heap_index       # its place in Server.deadlines + 1; 0: not there
    uint8_t path[128]       # the first bytes of :path, for UNIMPLEMENTED's message
    size_t path_len
    uint8_t prefix[5]       # the current message's gRPC prefix as it arrives
    uint32_t prefix_got
    uint64_t message_left   # bytes of the current message still to come
    uint32_t messages
    int64_t deadline_ns     # from grpc-timeout; 0: none
    uint8_t* ibuf           # the current request message, collected for Python
    size_t ilen
    size_t icap             # ibuf's size: grown as the message's bytes arrive, up to its length
    size_t ibuf_counted     # its bytes received, counted in Server.buffered until it goes to Python
    uint8_t* meta           # the caller's metadata for Python: (u32 name length, name, u32 value length, value)*
    size_t meta_len
    size_t meta_cap
    bint meta_overflow      # metadata over MAX_METADATA_BYTES: refused with RESOURCE_EXHAUSTED
    bint handed             # given to Python: an answer is owed, or a cancel event if none comes
    bint answered           # the final status is submitted (or the stream is being answered from C)
    bint headers_sent
    bint finishing          # the final status is known: send it after the buffered output
    bint deferred           # the data provider is waiting for output (NGHTTP2_ERR_DEFERRED)
    const uint8_t* out      # ROUTE_CANNED: reply bytes the data provider still has to send
    size_t out_len
    size_t out_off
    uint8_t* obuf           # ROUTE_UNARY/ROUTE_FORWARD: framed output not yet taken by nghttp2
    size_t olen
    size_t ooff
    size_t ocap
    char fstatus[12]        # the final grpc-status, as text
    uint8_t* fmessage       # its grpc-message (percent-encoded) and grpc-status-details-bin (base64)
    size_t fmessage_len
    uint8_t* fdetails
    size_t fdetails_len


# What the loop hands to Python (take()); the buffers are then Python's to copy and free.
cdef struct Event:
    int kind                # EV_*
    uint64_t serial         # the connection's serial and
    uint64_t token          # the stream's token: Python's token is serial << 47 | token
    int method              # EV_REQUEST: the unary path's index
    uint8_t* body           # EV_REQUEST, EV_MESSAGE: the message; EV_OPEN: the path
    size_t body_len
    uint8_t* meta           # EV_REQUEST, EV_OPEN: the metadata
    size_t meta_len
    int64_t deadline_ns


# What Python hands to the loop (reply, fail, send, finish, shutdown).
cdef struct Command:
    int kind                # CMD_*
    uint64_t serial
    uint64_t token
    uint8_t* data           # framed messages to send (NULL: none)
    size_t data_len
    bint finish             # then the final status
    char status[12]
    uint8_t* message
    size_t message_len
    uint8_t* details
    size_t details_len


cdef struct Deadline:
    int64_t at_ns
    Stream* stream          # removed from the heap when the stream stops waiting on Python


# A mutex-guarded list of Events or Commands shared by the loop and Python's thread.
cdef struct Mailbox:
    pthread_mutex_t lock
    void* items
    size_t n
    size_t cap
    size_t item_size
    int fd                  # an eventfd, written when the list goes from empty to not empty
    bint quiet              # inline mode: one thread puts and takes, so the eventfd is never used


cdef struct Server:
    int listen_fd
    int epoll_fd
    int stop_fd
    Canned* canned
    int n_canned
    UnaryPath* unary
    int n_unary
    bint forward_others     # paths neither canned nor unary are handed to Python as streams
    uint64_t max_message
    uint64_t max_buffered   # request bytes held in the loop at once, all connections (0: no bound)
    int64_t handshake_timeout_ns    # a connection must send its preface and SETTINGS within this (0: no bound)
    Conn* hs_head
    Conn* hs_tail
    uint64_t handshake_timeouts
    uint64_t buffered
    nghttp2_session_callbacks* callbacks
    nghttp2_option* option
    Conn* conns
    Conn** dirty
    int n_dirty
    int dirty_cap
    Conn** slots            # connections by slot
    uint64_t next_serial
    uint32_t* free_slots
    uint32_t n_free
    uint32_t n_slots
    Event* local            # events of this loop turn, published to `events` at its end
    size_t n_local
    size_t local_cap
    Mailbox events          # loop -> Python
    Mailbox commands        # Python -> loop
    Deadline* deadlines     # a min-heap of the deadlines of streams handed to Python
    size_t n_deadlines
    size_t deadlines_cap
    uint8_t* rbuf
    size_t rbuf_size
    bint inline             # turns run by poll() on the caller's thread, not by serve_forever()
    int timer_fd            # inline: a timerfd in the epoll set, by the nearest deadline
    int64_t timer_armed_ns  # what it is armed for; 0: not armed
    bint stopping
    bint draining
    uint64_t accepted
    int64_t open_conns
    uint64_t requests
    uint64_t errors
    uint64_t resets
    uint64_t handed_off
    uint64_t deadline_exceeded
