# libnghttp2 (Debian: libnghttp2-dev) and the Linux epoll/socket API, as the native HTTP/2 modules
# use them: declarations only, shared by mve/_h2transport.pyx and mve/_h2client.pyx. Add what a
# module needs here; nothing in this file generates code.

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t


cdef extern from "<sys/types.h>":
    ctypedef long ssize_t


cdef extern from "nghttp2/nghttp2.h" nogil:
    ctypedef struct nghttp2_session:
        pass
    ctypedef struct nghttp2_session_callbacks:
        pass
    ctypedef struct nghttp2_option:
        pass

    ctypedef struct nghttp2_info:
        const char* version_str
    nghttp2_info* nghttp2_version(int least_version)

    ctypedef struct nghttp2_nv:
        uint8_t* name
        uint8_t* value
        size_t namelen
        size_t valuelen
        uint8_t flags

    ctypedef struct nghttp2_frame_hd:
        size_t length
        int32_t stream_id
        uint8_t type
        uint8_t flags

    ctypedef enum nghttp2_headers_category:
        NGHTTP2_HCAT_REQUEST
        NGHTTP2_HCAT_RESPONSE
        NGHTTP2_HCAT_PUSH_RESPONSE
        NGHTTP2_HCAT_HEADERS

    ctypedef struct nghttp2_headers:
        nghttp2_frame_hd hd
        nghttp2_headers_category cat

    ctypedef struct nghttp2_rst_stream:
        nghttp2_frame_hd hd
        uint32_t error_code

    ctypedef union nghttp2_frame:
        nghttp2_frame_hd hd
        nghttp2_headers headers
        nghttp2_rst_stream rst_stream

    ctypedef union nghttp2_data_source:
        int fd
        void* ptr

    ctypedef ssize_t (*nghttp2_data_source_read_callback)(
        nghttp2_session* session, int32_t stream_id, uint8_t* buf, size_t length, uint32_t* data_flags,
        nghttp2_data_source* source, void* user_data) noexcept nogil

    ctypedef struct nghttp2_data_provider:
        nghttp2_data_source source
        nghttp2_data_source_read_callback read_callback

    ctypedef struct nghttp2_settings_entry:
        int32_t settings_id
        uint32_t value

    ctypedef int (*nghttp2_on_frame_recv_callback)(
        nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil
    ctypedef int (*nghttp2_on_begin_headers_callback)(
        nghttp2_session* session, const nghttp2_frame* frame, void* user_data) noexcept nogil
    ctypedef int (*nghttp2_on_header_callback)(
        nghttp2_session* session, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
        const uint8_t* value, size_t valuelen, uint8_t flags, void* user_data) noexcept nogil
    ctypedef int (*nghttp2_on_data_chunk_recv_callback)(
        nghttp2_session* session, uint8_t flags, int32_t stream_id, const uint8_t* data, size_t len,
        void* user_data) noexcept nogil
    ctypedef int (*nghttp2_on_stream_close_callback)(
        nghttp2_session* session, int32_t stream_id, uint32_t error_code, void* user_data) noexcept nogil

    enum:
        NGHTTP2_DATA
        NGHTTP2_HEADERS
        NGHTTP2_RST_STREAM
        NGHTTP2_FLAG_NONE
        NGHTTP2_FLAG_END_STREAM
        NGHTTP2_NV_FLAG_NONE
        NGHTTP2_NV_FLAG_NO_COPY_NAME
        NGHTTP2_NV_FLAG_NO_COPY_VALUE
        NGHTTP2_DATA_FLAG_EOF
        NGHTTP2_DATA_FLAG_NO_END_STREAM
        NGHTTP2_NO_ERROR
        NGHTTP2_INTERNAL_ERROR
        NGHTTP2_CANCEL
        NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS
        NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE
        NGHTTP2_SETTINGS_MAX_FRAME_SIZE
        NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE
        NGHTTP2_ERR_CALLBACK_FAILURE

    int nghttp2_session_callbacks_new(nghttp2_session_callbacks** callbacks_ptr)
    void nghttp2_session_callbacks_del(nghttp2_session_callbacks* callbacks)
    void nghttp2_session_callbacks_set_on_frame_recv_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_frame_recv_callback cb)
    void nghttp2_session_callbacks_set_on_begin_headers_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_begin_headers_callback cb)
    void nghttp2_session_callbacks_set_on_header_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_header_callback cb)
    void nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_data_chunk_recv_callback cb)
    void nghttp2_session_callbacks_set_on_stream_close_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_stream_close_callback cb)

    int nghttp2_option_new(nghttp2_option** option_ptr)
    void nghttp2_option_del(nghttp2_option* option)
    void nghttp2_option_set_no_closed_streams(nghttp2_option* option, int val)

    int nghttp2_session_server_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    void nghttp2_session_del(nghttp2_session* session)
    ssize_t nghttp2_session_mem_recv(nghttp2_session* session, const uint8_t* data, size_t length)
    ssize_t nghttp2_session_mem_send(nghttp2_session* session, const uint8_t** data_ptr)
    int nghttp2_session_want_read(nghttp2_session* session)
    int nghttp2_session_want_write(nghttp2_session* session)
    void* nghttp2_session_get_stream_user_data(nghttp2_session* session, int32_t stream_id)
    int nghttp2_session_set_stream_user_data(nghttp2_session* session, int32_t stream_id, void* stream_user_data)
    int nghttp2_session_set_local_window_size(nghttp2_session* session, uint8_t flags, int32_t stream_id,
                                              int32_t window_size)
    int nghttp2_session_terminate_session(nghttp2_session* session, uint32_t error_code)
    int nghttp2_submit_settings(nghttp2_session* session, uint8_t flags, const nghttp2_settings_entry* iv,
                                size_t niv)
    int nghttp2_submit_response(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen,
                                const nghttp2_data_provider* data_prd)
    int nghttp2_submit_trailer(nghttp2_session* session, int32_t stream_id, const nghttp2_nv* nva, size_t nvlen)
    int nghttp2_submit_rst_stream(nghttp2_session* session, uint8_t flags, int32_t stream_id, uint32_t error_code)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64

    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data

    enum:
        EPOLLIN
        EPOLLOUT
        EPOLLERR
        EPOLLHUP
        EPOLL_CTL_ADD
        EPOLL_CTL_MOD
        EPOLL_CTL_DEL
        EPOLL_CLOEXEC

    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)


cdef extern from "<sys/eventfd.h>" nogil:
    enum:
        EFD_NONBLOCK
        EFD_CLOEXEC
    int eventfd(unsigned int initval, int flags)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    cdef struct sockaddr:
        pass
    enum:
        SOCK_NONBLOCK
        SOCK_CLOEXEC
        MSG_NOSIGNAL
    int accept4(int sockfd, sockaddr* addr, socklen_t* addrlen, int flags)
    ssize_t recv(int sockfd, void* buf, size_t length, int flags)
    ssize_t send(int sockfd, const void* buf, size_t length, int flags)
    int setsockopt(int sockfd, int level, int optname, const void* optval, socklen_t optlen)


cdef extern from "<netinet/in.h>" nogil:
    enum:
        IPPROTO_TCP


cdef extern from "<netinet/tcp.h>" nogil:
    enum:
        TCP_NODELAY


cdef extern from "nghttp2/nghttp2.h" nogil:
    enum:
        NGHTTP2_ERR_DEFERRED
        NGHTTP2_REFUSED_STREAM
    int nghttp2_session_resume_data(nghttp2_session* session, int32_t stream_id)
    int32_t nghttp2_session_get_last_proc_stream_id(nghttp2_session* session)
    int nghttp2_submit_goaway(nghttp2_session* session, uint8_t flags, int32_t last_stream_id, uint32_t error_code,
                              const uint8_t* opaque_data, size_t opaque_data_len)


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t* mutex, const void* attr)
    int pthread_mutex_destroy(pthread_mutex_t* mutex)
    int pthread_mutex_lock(pthread_mutex_t* mutex)
    int pthread_mutex_unlock(pthread_mutex_t* mutex)


cdef extern from "<sys/socket.h>" nogil:
    enum:
        SOL_SOCKET
        SO_REUSEPORT


# ---- added for mve/_h2client.pyx (the native gRPC client) ----

cdef extern from "nghttp2/nghttp2.h" nogil:
    ctypedef struct nghttp2_priority_spec:
        pass

    ctypedef struct nghttp2_goaway:
        nghttp2_frame_hd hd
        int32_t last_stream_id
        uint32_t error_code

    ctypedef int (*nghttp2_on_frame_not_send_callback)(
        nghttp2_session* session, const nghttp2_frame* frame, int lib_error_code, void* user_data) noexcept nogil

    enum:
        NGHTTP2_GOAWAY
        NGHTTP2_SETTINGS_ENABLE_PUSH
        NGHTTP2_PROTOCOL_ERROR
        NGHTTP2_ENHANCE_YOUR_CALM
        NGHTTP2_INADEQUATE_SECURITY
        NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE

    int nghttp2_session_client_new2(nghttp2_session** session_ptr, const nghttp2_session_callbacks* callbacks,
                                    void* user_data, const nghttp2_option* option)
    int32_t nghttp2_submit_request(nghttp2_session* session, const nghttp2_priority_spec* pri_spec,
                                   const nghttp2_nv* nva, size_t nvlen, const nghttp2_data_provider* data_prd,
                                   void* stream_user_data)
    int nghttp2_session_check_request_allowed(nghttp2_session* session)
    const char* nghttp2_strerror(int lib_error_code)
    const char* nghttp2_http2_strerror(uint32_t error_code)
    void nghttp2_session_callbacks_set_on_frame_not_send_callback(
        nghttp2_session_callbacks* cbs, nghttp2_on_frame_not_send_callback cb)


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned short sa_family_t
    enum:
        AF_INET
        AF_INET6
        SOCK_STREAM
        SO_ERROR
    int socket(int domain, int type, int protocol)
    int connect(int sockfd, const sockaddr* addr, socklen_t addrlen)
    int getsockopt(int sockfd, int level, int optname, void* optval, socklen_t* optlen)


cdef extern from "<netdb.h>" nogil:
    cdef struct addrinfo:
        int ai_flags
        int ai_family
        int ai_socktype
        int ai_protocol
        socklen_t ai_addrlen
        sockaddr* ai_addr
        char* ai_canonname
        addrinfo* ai_next
    int getaddrinfo(const char* node, const char* service, const addrinfo* hints, addrinfo** res)
    void freeaddrinfo(addrinfo* res)
    const char* gai_strerror(int errcode)



from posix.time cimport timespec

cdef extern from "<sys/timerfd.h>" nogil:
    cdef struct itimerspec:
        timespec it_interval
        timespec it_value
    enum:
        TFD_NONBLOCK
        TFD_CLOEXEC
        TFD_TIMER_ABSTIME
    int timerfd_create(int clockid, int flags)
    int timerfd_settime(int fd, int flags, const itimerspec* new_value, itimerspec* old_value)
