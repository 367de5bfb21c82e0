//! Thin, cold-path socket set-up through libc: creating sockets, options,
//! bind/listen/connect, and converting between `std::net` and `sockaddr`.
//! Nothing here runs per message.

use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ring::zeroed;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A new non-blocking, close-on-exec socket.
pub(crate) fn socket(domain: libc::c_int, ty: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd =
        check(unsafe { libc::socket(domain, ty | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: fd was just returned by socket(2) and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(crate) fn domain_of(addr: &SocketAddr) -> libc::c_int {
    match addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    }
}

pub(crate) fn set_option<T: Copy>(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: T,
) -> io::Result<()> {
    // SAFETY: value is a live T and its exact size is passed.
    check(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

pub(crate) fn get_int_option(fd: RawFd, level: libc::c_int, name: libc::c_int) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len are live and len holds value's size.
    check(unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

pub(crate) fn set_nodelay(fd: RawFd) -> io::Result<()> {
    set_option(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY, 1 as libc::c_int)
}

pub(crate) fn set_reuse(fd: RawFd, port_too: bool) -> io::Result<()> {
    set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1 as libc::c_int)?;
    if port_too {
        set_option(fd, libc::SOL_SOCKET, libc::SO_REUSEPORT, 1 as libc::c_int)?;
    }
    Ok(())
}

/// Asks for `bytes` of socket buffer (`SO_RCVBUFFORCE`/`SO_SNDBUFFORCE`
/// first, which lets root exceed the `rmem_max`/`wmem_max` sysctls, then the
/// capped plain option) and returns what the kernel reports it got (the
/// kernel doubles the request for its bookkeeping).
pub(crate) fn grow_buffer(fd: RawFd, receive: bool, bytes: usize) -> io::Result<usize> {
    let (force, plain) = if receive {
        (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF)
    } else {
        (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF)
    };
    let bytes = bytes.min(i32::MAX as usize) as libc::c_int;
    if set_option(fd, libc::SOL_SOCKET, force, bytes).is_err() {
        // Not privileged: take what the sysctl cap allows.
        set_option(fd, libc::SOL_SOCKET, plain, bytes)?;
    }
    Ok(get_int_option(fd, libc::SOL_SOCKET, plain)?.max(0) as usize)
}

pub(crate) fn in_addr(ip: Ipv4Addr) -> libc::in_addr {
    libc::in_addr {
        s_addr: u32::from(ip).to_be(),
    }
}

pub(crate) fn sockaddr_in(addr: SocketAddrV4) -> libc::sockaddr_in {
    let mut sa: libc::sockaddr_in = zeroed();
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = addr.port().to_be();
    sa.sin_addr = in_addr(*addr.ip());
    sa
}

pub(crate) fn from_sockaddr_in(sa: &libc::sockaddr_in) -> Option<SocketAddrV4> {
    if sa.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    Some(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    ))
}

/// `addr` as a `sockaddr_storage` and the length of the part that is used.
pub(crate) fn sockaddr_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    let mut storage: libc::sockaddr_storage = zeroed();
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sa = sockaddr_in(*v4);
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in>()
                    .write(sa)
            };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let mut sa: libc::sockaddr_in6 = zeroed();
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_port = v6.port().to_be();
            sa.sin6_addr = libc::in6_addr {
                s6_addr: v6.ip().octets(),
            };
            sa.sin6_flowinfo = v6.flowinfo();
            sa.sin6_scope_id = v6.scope_id();
            // SAFETY: sockaddr_storage is larger than and suitably aligned
            // for sockaddr_in6.
            unsafe {
                (&mut storage as *mut libc::sockaddr_storage)
                    .cast::<libc::sockaddr_in6>()
                    .write(sa)
            };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

pub(crate) fn from_sockaddr_storage(storage: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in, and
            // sockaddr_storage is larger than and aligned for it.
            let sa =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            from_sockaddr_in(sa).map(SocketAddr::V4)
        }
        libc::AF_INET6 => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and
            // sockaddr_storage is larger than and aligned for it.
            let sa = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sa.sin6_addr.s6_addr),
                u16::from_be(sa.sin6_port),
                sa.sin6_flowinfo,
                sa.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

pub(crate) fn bind(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_storage(addr);
    // SAFETY: storage is a live sockaddr of length len.
    check(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

/// connect(2) on a datagram socket: fixes the destination, completes at once.
pub(crate) fn connect_datagram(fd: RawFd, addr: &SocketAddr) -> io::Result<()> {
    let (storage, len) = sockaddr_storage(addr);
    // SAFETY: storage is a live sockaddr of length len.
    check(unsafe { libc::connect(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    Ok(())
}

pub(crate) fn listen(fd: RawFd, backlog: u32) -> io::Result<()> {
    // SAFETY: listen(2) has no memory-safety preconditions.
    check(unsafe { libc::listen(fd, backlog.min(i32::MAX as u32) as libc::c_int) })?;
    Ok(())
}

fn name_of(fd: RawFd, peer: bool) -> io::Result<SocketAddr> {
    let mut storage: libc::sockaddr_storage = zeroed();
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let ptr = (&mut storage as *mut libc::sockaddr_storage).cast();
    // SAFETY: storage and len are live; len holds storage's size.
    check(unsafe {
        if peer {
            libc::getpeername(fd, ptr, &mut len)
        } else {
            libc::getsockname(fd, ptr, &mut len)
        }
    })?;
    from_sockaddr_storage(&storage)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "socket address is not IP"))
}

pub(crate) fn local_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, false)
}

pub(crate) fn peer_addr(fd: RawFd) -> io::Result<SocketAddr> {
    name_of(fd, true)
}

pub(crate) fn local_addr_v4(fd: &OwnedFd) -> io::Result<SocketAddrV4> {
    match local_addr(fd.as_raw_fd())? {
        SocketAddr::V4(v4) => Ok(v4),
        SocketAddr::V6(_) => Err(io::Error::new(io::ErrorKind::InvalidData, "expected IPv4")),
    }
}

/// close(2) on a descriptor we own as a raw number (TCP connection slots).
pub(crate) fn close_raw(fd: RawFd) {
    // SAFETY: callers pass a descriptor they own and never use it again.
    unsafe {
        libc::close(fd);
    }
}
