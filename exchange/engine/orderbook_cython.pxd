# Typed layout of the Cython build of orderbook.py (Cython "pure Python mode").
#
# scripts/build-engine.sh copies orderbook.py to orderbook_cython.py next to
# this file and compiles it: the source is the same, this file only adds C
# types. Everything declared here must keep the pure-Python semantics:
# - values typed `long long` are range-checked before they get here (prices
#   and quantities are below 2**62, keys are +-price, `_NO_BOUND` is -2**63);
# - a level's `total` is a sum of quantities that can pass 2**63, so it stays
#   a Python int;
# - flags that the pure core stores as given (post_only, reduce_only,
#   market_data) stay Python objects so state() encodes them identically.
cimport cython


cdef class Order:
    cdef public long long oid
    cdef public object id
    cdef public object account
    cdef public bint is_buy
    cdef public long long price
    cdef public long long qty
    cdef public object post_only
    cdef public long long stp
    cdef public object reduce_only
    cdef public Level level
    cdef public Order prev
    cdef public Order next


cdef class Level:
    cdef public long long key
    cdef public long long price
    cdef public object total
    cdef public long long count
    cdef public Order head
    cdef public Order tail


cdef class BookSide:
    cdef public long long sign
    cdef public dict levels
    cdef public list keys


cdef class OrderBook:
    # Attributes added to the pure source later still work (slower) through
    # the instance dict until they are declared here.
    cdef dict __dict__
    cdef public object instrument
    cdef public object market_data
    cdef public object reduce_only_hook
    cdef public list events
    cdef public long long seq
    cdef public long long next_oid
    cdef public BookSide bids
    cdef public BookSide asks
    cdef public dict orders
    cdef public dict stops
    cdef public object last_price
    cdef public object mark_price
    cdef public object _tick
    cdef public object _lot
    cdef public object _min_qty
    cdef public object _max_qty
    cdef public object _band_bps
    cdef public object reference_price
    cdef public object _band_lo
    cdef public object _band_hi
    cdef public object _halt_reason
    cdef public list _touched
    cdef public tuple _bbo

    @cython.locals(remaining=cython.longlong, seq=cython.longlong, traded_price=cython.longlong,
                   key=cython.longlong, price=cython.longlong, oqty=cython.longlong,
                   level=Level, o=Order, nxt=Order, opp=BookSide, keys=list, levels=dict,
                   events=list, orders=dict)
    cpdef long long _match(self, object id, object account, bint is_buy, long long bound,
                           long long qty, long long stp, object ts) except? -1
    @cython.locals(side=BookSide, key=cython.longlong, level=Level, keys=list, tail=Order)
    cpdef _rest(self, Order o)
    @cython.locals(level=Level, prev=Order, nxt=Order, side=BookSide, keys=list,
                   key=cython.longlong)
    cpdef _remove(self, Order o)
    @cython.locals(nxt=Order)
    cpdef _unlink_head(self, Level level, Order o)
