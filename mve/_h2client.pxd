# The C-level contract of mve/_h2client.pyx: the client's own state structs. The libnghttp2,
# epoll/socket and pthread declarations are in mve/_h2lib.pxd.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

from mve._h2io cimport WriteBuffer
from mve._h2lib cimport *


cdef struct Client
cdef struct HConn


# What a queue entry asks of the loop.
cdef enum OpKind:
    OP_CALL = 0
    OP_CANCEL = 1
    OP_CLOSE_ADDRESS = 2


# Where a call is; only DONE is set (and read) under the client's lock on both threads.
cdef enum CallState:
    CALL_QUEUED = 0         # in the submission queue
    CALL_ACTIVE = 1         # the loop owns it: on a connection's session
    CALL_FINISHED = 2       # the loop finished it this turn; published at the end of the turn
    CALL_DONE = 3           # in the completion queue, for take()
    CALL_DROPPED = 4        # finished after cancel(): never delivered; its cancel op frees it


# One unary call, from call() to take() (or to its cancel). Also the submission queue's entry for
# a cancel (target) or a close_address (addr).
cdef struct Call:
    uint64_t id
    OpKind kind
    CallState state
    Call* next              # submission / finished / completion queue
    Call* prev              # the connection's list of calls
    Call* conn_next
    Call* target            # OP_CANCEL: the call to cancel
    HConn* conn
    int32_t stream_id
    size_t heap_index       # position in the deadline heap; SIZE_MAX when not in it
    int64_t deadline_ns
    # the request: one block holds the address, the header names and values and the nv array
    uint8_t* block
    const uint8_t* addr
    size_t addr_len
    nghttp2_nv* nva
    size_t nvlen
    uint8_t* body           # gRPC-framed request (5-byte prefix + message)
    size_t body_len
    size_t body_off
    # the answer
    int http_status         # 0 until :status arrives
    int grpc_status         # -1 until grpc-status arrives (or the client decides one)
    bint local              # grpc_status and message were set here, not by the server
    bint message_encoded    # message is percent-encoded (the server's grpc-message)
    uint8_t* message
    size_t message_len
    uint8_t* trailers       # records of (u32 name length, name, u32 value length, value)
    size_t trailers_len
    size_t trailers_cap
    uint8_t prefix[5]       # the reply's gRPC prefix as it arrives
    uint32_t prefix_got
    uint64_t message_left
    uint32_t messages
    uint8_t* reply
    size_t reply_len
    size_t reply_cap
    # cancel(): set under the lock by cancel(); cancel_seen by the loop when it handles the op
    bint cancelled
    bint cancel_seen
    uint8_t refusals        # times the server refused its stream (REFUSED_STREAM), each sent again
    bint retrying           # on the loop's retry list (off any connection and the heap)


cdef struct HConn:
    int fd
    nghttp2_session* session
    Client* client
    HConn* prev
    HConn* next
    uint8_t addr[256]       # "host:port"
    size_t addr_len
    Call* calls             # calls on this connection's session
    int64_t n_calls
    WriteBuffer out         # bytes from nghttp2_session_mem_send not yet written
    bint connecting         # non-blocking connect in progress (EPOLLOUT registered)
    bint dirty              # has something to send: flushed once at the end of the loop turn
    bint want_out           # EPOLLOUT registered (the socket's buffer was full)
    bint dead
    bint goaway             # the peer sent GOAWAY, or stream ids ran out: no new calls
    bint retiring           # close_address: no new calls; closed once its calls finish
    bint terminated         # our GOAWAY submitted
    char error[256]         # why it died, for the calls' UNAVAILABLE message


cdef struct Client:
    int epoll_fd
    int wake_fd             # eventfd: the submission queue became non-empty, or stop()
    int notify_fd           # eventfd: the completion queue became non-empty
    int timer_fd            # inline mode: a timerfd armed by the nearest deadline
    int64_t timer_armed_ns  # what timer_fd is armed for (CLOCK_MONOTONIC); 0: disarmed or fired
    bint inline             # turns run by poll() on the caller's thread, not by a thread of our own
    pthread_mutex_t lock    # guards both queues, sub_signalled, stopping, closed, and CALL_DONE
    Call* sub_head
    Call* sub_tail
    bint sub_signalled      # wake_fd written since the loop last took the submission queue
    Call* done_head
    Call* done_tail
    bint stopping
    bint closed             # the loop has ended: call() refuses
    # owned by the loop thread
    Call* fin_head          # finished this turn
    Call* fin_tail
    Call* retry_head        # refused this turn, to be sent again
    Call** heap             # min-heap of calls by deadline
    size_t heap_len
    size_t heap_cap
    HConn* conns
    HConn** dirty
    int n_dirty
    int dirty_cap
    uint8_t* rbuf
    size_t rbuf_size
    uint64_t max_message
    nghttp2_session_callbacks* callbacks
    nghttp2_option* option
    # counters (written by the loop or under the lock; read without it)
    uint64_t calls
    uint64_t completed
    uint64_t errors
    uint64_t connections
    int64_t open_conns
    uint64_t wakeups        # turns woken by wake_fd
    uint64_t notifies       # writes of notify_fd
    uint64_t refused        # streams refused by the server and sent again
