"""HTML/JavaScript of the monitor page (self-contained: no CDN, the beamline may be offline).

The page opens ``/ws`` and redraws on every state message; plots are drawn on canvases.
Element ids the browser test reads: ``frames-in``, ``classified``, ``dropped``, ``malformed``,
``fps``, ``p99``, ``status``.
"""

PAGE_HTML = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>speckle_embed stream monitor</title>
<style>
body{font-family:sans-serif;margin:12px;background:#fafafa;color:#222}
h1{font-size:18px;margin:0 0 8px} h2{font-size:14px;margin:10px 0 4px}
.row{display:flex;flex-wrap:wrap;gap:14px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px}
table.n td{padding:2px 10px;font-size:14px} table.n td.v{font-weight:bold;text-align:right;font-family:monospace}
canvas{background:#fff;border:1px solid #eee}
.thumbs img{width:128px;height:128px;image-rendering:pixelated;margin:2px;border:1px solid #ccc;background:#000}
.cap{font-size:11px;text-align:center}
#status{font-size:12px;color:#666}
</style></head><body>
<h1>speckle_embed &mdash; online veto monitor</h1><div id="status">connecting&hellip;</div>
<div class="row">
 <div class="card"><h2>Counters</h2><table class="n">
  <tr><td>frames in</td><td class="v" id="frames-in">-</td></tr>
  <tr><td>classified</td><td class="v" id="classified">-</td></tr>
  <tr><td>dropped</td><td class="v" id="dropped">-</td></tr>
  <tr><td>malformed</td><td class="v" id="malformed">-</td></tr>
  <tr><td>reconnects</td><td class="v" id="reconnects">-</td></tr>
  <tr><td>frames/s</td><td class="v" id="fps">-</td></tr>
  <tr><td>latency p50 / p99 (ms)</td><td class="v"><span id="p50">-</span> / <span id="p99">-</span></td></tr>
  <tr><td>singles written</td><td class="v" id="singles">-</td></tr>
 </table><h2>Per class</h2><table class="n" id="classes"></table></div>
 <div class="card"><h2>Throughput (frames/s)</h2><canvas id="tput" width="420" height="170"></canvas>
  <h2>Per-class hit rate (fraction)</h2><canvas id="rates" width="420" height="170"></canvas></div>
 <div class="card"><h2>Decision margin</h2><canvas id="margin" width="300" height="170"></canvas></div>
</div>
<div class="card"><h2>Latest frame per predicted class (log scale)</h2><div class="thumbs row" id="latest"></div></div>
<div class="card"><h2>Support frames</h2><div class="thumbs row" id="supports"></div></div>
<script>
const COLORS=["#1f77b4","#d62728","#2ca02c","#9467bd","#ff7f0e","#8c564b","#e377c2","#7f7f7f"];
function fmt(v,d){return (v===null||v===undefined)?"-":(typeof v==="number"?v.toLocaleString("en-US",{maximumFractionDigits:d||0}):v)}
function axes(ctx,w,h,ymax,label){ctx.clearRect(0,0,w,h);ctx.strokeStyle="#999";ctx.beginPath();ctx.moveTo(40,5);ctx.lineTo(40,h-20);ctx.lineTo(w-5,h-20);ctx.stroke();
 ctx.fillStyle="#444";ctx.font="10px sans-serif";ctx.fillText(fmt(ymax,ymax<10?2:0),2,12);ctx.fillText("0",28,h-22);ctx.fillText(label,w-90,h-6)}
function lines(id,series,ymax){const c=document.getElementById(id),ctx=c.getContext("2d"),w=c.width,h=c.height;
 axes(ctx,w,h,ymax,"time (s)");let k=0;for(const [name,ys] of series){ctx.strokeStyle=COLORS[k%COLORS.length];ctx.beginPath();
  ys.forEach((y,i)=>{const x=40+(w-45)*(ys.length>1?i/(ys.length-1):1),yy=h-20-(h-25)*(ymax>0?y/ymax:0);i?ctx.lineTo(x,yy):ctx.moveTo(x,yy)});ctx.stroke();
  ys.forEach((y,i)=>{const x=40+(w-45)*(ys.length>1?i/(ys.length-1):1),yy=h-20-(h-25)*(ymax>0?y/ymax:0);ctx.fillStyle=ctx.strokeStyle;ctx.fillRect(x-2,yy-2,4,4)});
  ctx.fillStyle=ctx.strokeStyle;ctx.fillText(name,50+80*k,14);k++}}
function hist(id,hh){const c=document.getElementById(id),ctx=c.getContext("2d"),w=c.width,h=c.height;const m=Math.max(1,...hh.counts);
 axes(ctx,w,h,m,"p(best)-p(2nd)");const bw=(w-45)/hh.counts.length;ctx.fillStyle="#1f77b4";
 hh.counts.forEach((n,i)=>{const bh=(h-25)*n/m;ctx.fillRect(41+i*bw,h-20-bh,bw-1,bh)})}
function thumbs(id,items){const el=document.getElementById(id);el.innerHTML="";for(const it of items){const d=document.createElement("div");
 d.innerHTML='<img src="'+it.png+'"><div class="cap">'+it.caption+'</div>';el.appendChild(d)}}
function draw(s){const c=s.counters;
 document.getElementById("status").textContent="updated "+new Date().toLocaleTimeString()+" | uptime "+fmt(c.uptime_s,1)+" s | source "+s.source;
 for(const [id,v] of [["frames-in",c.frames_in],["classified",c.classified],["dropped",c.dropped],["malformed",c.malformed_total],
  ["reconnects",c.reconnects],["singles",c.singles_written]]) document.getElementById(id).textContent=fmt(v);
 document.getElementById("fps").textContent=fmt(c.frames_per_s,1);
 document.getElementById("p50").textContent=fmt(c.latency.p50_ms,1);document.getElementById("p99").textContent=fmt(c.latency.p99_ms,1);
 document.getElementById("classes").innerHTML=Object.entries(c.per_class).map(([k,v])=>"<tr><td>"+k+"</td><td class='v'>"+fmt(v)+"</td></tr>").join("");
 const H=s.history,tot=H.frames_per_s;lines("tput",[["frames/s",tot]],Math.max(1,...tot));
 lines("rates",Object.entries(H.class_rates).map(([k,ys])=>[k,ys.map((y,i)=>tot[i]?y/tot[i]:0)]),1);
 hist("margin",s.margin);thumbs("latest",s.latest);thumbs("supports",s.supports)}
function connect(){const ws=new WebSocket((location.protocol==="https:"?"wss://":"ws://")+location.host+"/ws");
 ws.onmessage=e=>draw(JSON.parse(e.data));ws.onclose=()=>{document.getElementById("status").textContent="disconnected; retrying";setTimeout(connect,1000)}}
connect();
</script></body></html>
"""
