# The C-level contract of mve/_h2transport.pyx: the server's own state structs. The libnghttp2
# and epoll/socket declarations are in mve/_h2lib.pxd.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t

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


cdef struct Conn:
    int fd
    nghttp2_session* session
    Server* server
    Conn* prev
    Conn* next
    Stream* streams         # open streams, freed with the connection
    uint8_t* wbuf           # bytes from nghttp2_session_mem_send not yet written
    size_t wlen
    size_t woff
    size_t wcap
    bint dirty              # has something to send: flushed once at the end of the loop turn
    bint want_out           # EPOLLOUT registered (the socket's buffer was full)
    bint dead


# One request stream; freed when nghttp2 closes the stream.
cdef struct Stream:
    int32_t id
    Conn* conn
    Stream* prev
    Stream* next
    const Canned* route     # NULL: no such method
    uint8_t path[128]       # the first bytes of :path, for UNIMPLEMENTED's message
    size_t path_len
    uint8_t prefix[5]       # the current message's gRPC prefix as it arrives
    uint32_t prefix_got
    uint64_t message_left   # bytes of the current message still to come
    uint32_t messages
    int64_t deadline_ns     # from grpc-timeout; 0: none
    bint answered
    const uint8_t* out      # reply bytes the data provider still has to send
    size_t out_len
    size_t out_off


cdef struct Server:
    int listen_fd
    int epoll_fd
    int stop_fd
    Canned* canned
    int n_canned
    uint64_t max_message
    nghttp2_session_callbacks* callbacks
    nghttp2_option* option
    Conn* conns
    Conn** dirty
    int n_dirty
    int dirty_cap
    uint8_t* rbuf
    size_t rbuf_size
    bint stopping
    uint64_t accepted
    int64_t open_conns
    uint64_t requests
    uint64_t errors
    uint64_t resets
